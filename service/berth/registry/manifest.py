"""Parsing and validating manifests (pure: no storage, no HTTP).

Accepts OCI image manifests and indexes, Docker schema2 manifests and manifest lists, and
artifacts (``artifactType``, empty configs, and manifests without a top-level ``mediaType`` as
Helm writes them: their type is inferred from their shape).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from . import mediatypes as mt
from .digest import Digest
from .errors import DigestInvalid, ManifestInvalid


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    platform: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = self.annotations
        return out


@dataclass(frozen=True, slots=True)
class Manifest:
    media_type: str
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()  # children of an index
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = field(default=None)

    def blob_references(self) -> list[Descriptor]:
        """Blobs this manifest needs in its repository (foreign layers excepted)."""
        refs = [self.config] if self.config else []
        refs += [d for d in self.layers if d.media_type not in mt.FOREIGN_LAYERS]
        return refs

    def referrer_artifact_type(self) -> str | None:
        """What the referrers API reports: artifactType, else the config's media type."""
        if self.artifact_type:
            return self.artifact_type
        return self.config.media_type if self.config else None


# Descriptor sizes are int64 in the OCI spec (and in every Go client).
MAX_SIZE = 2**63 - 1


def _fail(message: str) -> ManifestInvalid:
    return ManifestInvalid(message)


def _str(obj: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise _fail(f"{key} must be a non-empty string")
    return value


def _annotations(obj: dict[str, Any]) -> dict[str, str] | None:
    value = obj.get("annotations")
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _fail("annotations must map strings to strings")
    return value


def parse_descriptor(obj: Any, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise _fail(f"{where} must be a descriptor object")
    media_type = _str(obj, "mediaType")
    assert media_type is not None
    raw_digest = obj.get("digest")
    try:
        digest = Digest.parse(raw_digest if isinstance(raw_digest, str) else "")
    except DigestInvalid:
        raise _fail(f"{where} has an invalid digest") from None
    size = obj.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_SIZE:
        raise _fail(f"{where} has an invalid size")
    platform = obj.get("platform")
    if platform is not None and not isinstance(platform, dict):
        raise _fail(f"{where} has an invalid platform")
    urls = obj.get("urls")
    if urls is not None and not (isinstance(urls, list) and all(isinstance(u, str) for u in urls)):
        raise _fail(f"{where} has invalid urls")
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        artifact_type=_str(obj, "artifactType", required=False),
        annotations=_annotations(obj),
        platform=platform,
    )


def detect_media_type(body: dict[str, Any], content_type: str | None) -> str:
    """The manifest's type: its own ``mediaType``, else its shape.

    Without ``mediaType`` the shape decides (as Distribution does), because a stored manifest is
    read back with no Content-Type: a Content-Type naming another type is refused, or the
    manifest would later be served as something else, or fail to parse at all.
    """
    declared = body.get("mediaType")
    if declared is not None:
        if not isinstance(declared, str):
            raise _fail("mediaType must be a string")
        if content_type in mt.MANIFESTS and declared != content_type:
            raise _fail(f"mediaType {declared!r} does not match Content-Type {content_type!r}")
        return declared
    shape = mt.OCI_INDEX if "manifests" in body else mt.OCI_MANIFEST
    if content_type in mt.MANIFESTS and content_type != shape:
        raise _fail(f"a manifest without mediaType is {shape} by its shape, not {content_type}")
    return shape


def _not_json(constant: str) -> Any:
    """Python's json accepts NaN and Infinity; JSON (and every Go client) does not."""
    raise ValueError(f"{constant} is not JSON")


def parse_manifest(raw: bytes, content_type: str | None = None) -> Manifest:
    try:
        body = json.loads(raw, parse_constant=_not_json)
    except (ValueError, RecursionError):
        raise _fail("manifest is not valid JSON") from None
    if not isinstance(body, dict):
        raise _fail("manifest must be a JSON object")
    if content_type:
        content_type = content_type.split(";", 1)[0].strip()
    media_type = detect_media_type(body, content_type)
    if media_type in (mt.DOCKER_SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED):
        raise _fail("Docker schema 1 manifests are not supported")
    if media_type not in mt.MANIFESTS:
        raise _fail(f"unsupported manifest media type {media_type!r}")
    version = body.get("schemaVersion")
    if type(version) is not int or version != 2:  # 2.0 == 2 in Python, not to Go clients
        raise _fail("schemaVersion must be 2")

    subject = None
    if body.get("subject") is not None:
        subject = parse_descriptor(body["subject"], "subject")
    artifact_type = _str(body, "artifactType", required=False)
    annotations = _annotations(body)

    if media_type in mt.INDEXES:
        children = body.get("manifests")
        if not isinstance(children, list):
            raise _fail("manifests must be a list")
        return Manifest(
            media_type=media_type,
            manifests=tuple(parse_descriptor(c, f"manifests[{i}]") for i, c in enumerate(children)),
            subject=subject,
            artifact_type=artifact_type,
            annotations=annotations,
        )

    layers = body.get("layers")
    if layers is None and media_type == mt.OCI_MANIFEST:
        layers = []
    if not isinstance(layers, list):
        raise _fail("layers must be a list")
    return Manifest(
        media_type=media_type,
        config=parse_descriptor(body.get("config"), "config"),
        layers=tuple(parse_descriptor(layer, f"layers[{i}]") for i, layer in enumerate(layers)),
        subject=subject,
        artifact_type=artifact_type,
        annotations=annotations,
    )
