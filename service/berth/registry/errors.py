"""Typed registry errors; the HTTP layer maps each to the OCI error envelope in one place."""

from __future__ import annotations

from typing import Any


class RegistryError(Exception):
    """An error with an OCI error code and the HTTP status the spec gives it."""

    code = "UNKNOWN"
    status = 500
    default_message = "unknown error"

    def __init__(
        self,
        message: str | None = None,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.detail = detail
        self.headers = headers or {}
        super().__init__(self.message)


class BlobUnknown(RegistryError):
    code = "BLOB_UNKNOWN"
    status = 404
    default_message = "blob unknown to registry"


class BlobUploadInvalid(RegistryError):
    code = "BLOB_UPLOAD_INVALID"
    status = 400
    default_message = "blob upload invalid"


class BlobUploadUnknown(RegistryError):
    code = "BLOB_UPLOAD_UNKNOWN"
    status = 404
    default_message = "blob upload unknown to registry"


class DigestInvalid(RegistryError):
    code = "DIGEST_INVALID"
    status = 400
    default_message = "provided digest did not match uploaded content"


class ManifestBlobUnknown(RegistryError):
    code = "MANIFEST_BLOB_UNKNOWN"
    status = 400
    default_message = "manifest references unknown blob"


class ManifestInvalid(RegistryError):
    code = "MANIFEST_INVALID"
    status = 400
    default_message = "manifest invalid"


class ManifestUnknown(RegistryError):
    code = "MANIFEST_UNKNOWN"
    status = 404
    default_message = "manifest unknown"


class NameInvalid(RegistryError):
    code = "NAME_INVALID"
    status = 400
    default_message = "invalid repository name"


class NameUnknown(RegistryError):
    code = "NAME_UNKNOWN"
    status = 404
    default_message = "repository name not known to registry"


class SizeInvalid(RegistryError):
    code = "SIZE_INVALID"
    status = 400
    default_message = "provided length did not match content length"


class TagInvalid(RegistryError):
    code = "TAG_INVALID"
    status = 400
    default_message = "manifest tag did not match URI"


class Unauthorized(RegistryError):
    code = "UNAUTHORIZED"
    status = 401
    default_message = "authentication required"


class Denied(RegistryError):
    code = "DENIED"
    status = 403
    default_message = "requested access to the resource is denied"


class Unsupported(RegistryError):
    code = "UNSUPPORTED"
    status = 405
    default_message = "the operation is unsupported"


class RangeInvalid(RegistryError):
    code = "RANGE_INVALID"
    status = 416
    default_message = "invalid content range"


class PaginationInvalid(RegistryError):
    code = "PAGINATION_NUMBER_INVALID"
    status = 400
    default_message = "invalid number of results requested"


class ManifestTooLarge(RegistryError):
    code = "MANIFEST_INVALID"
    status = 413
    default_message = "manifest exceeds the size limit"


class UpstreamInvalid(RegistryError):
    """A pull-through upstream answered something unusable (wrong digest, truncated body, a
    manifest that does not parse, an unexpected status); nothing of it was stored."""

    code = "UNKNOWN"
    status = 502
    default_message = "the upstream registry answered something unusable"


class UpstreamUnavailable(RegistryError):
    """A pull-through upstream cannot be reached, fails, or rate-limits us, and the content
    was never cached."""

    code = "UNAVAILABLE"
    status = 503
    default_message = "the upstream registry is unavailable"


class UpstreamTimeout(RegistryError):
    code = "UNAVAILABLE"
    status = 504
    default_message = "the upstream registry did not answer in time"
