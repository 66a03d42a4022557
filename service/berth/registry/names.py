"""Repository names, tags and references, validated by the OCI distribution spec's expressions.

A valid name is lowercase alphanumerics joined by ``.``, ``_``, ``__`` or dashes, in ``/``-separated
components: it can never contain ``..``, an empty component or a leading ``/``, so no name can
escape the storage root.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .digest import Digest
from .errors import ManifestUnknown, NameInvalid, TagInvalid

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
MAX_NAME_LENGTH = 255


def validate_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not NAME_RE.fullmatch(name):
        raise NameInvalid(f"invalid repository name: {name[:300]!r}")
    return name


def validate_tag(tag: str) -> str:
    if not TAG_RE.fullmatch(tag):
        raise TagInvalid(f"invalid tag: {tag[:200]!r}")
    return tag


def validate_tags(tags: Iterable[str]) -> list[str]:
    """Each tag validated (TAG_INVALID for the first bad one), duplicates dropped, order kept."""
    return list(dict.fromkeys(validate_tag(tag) for tag in tags))


def is_digest_reference(reference: str) -> bool:
    """Digest-shaped: a tag can never contain ':', so anything with one is a digest or invalid."""
    return ":" in reference


def parse_reference(reference: str) -> str | Digest:
    """A manifest reference is a digest (contains ':') or a tag.

    DIGEST_INVALID for a malformed digest, TAG_INVALID for anything else that is not a tag.
    """
    if is_digest_reference(reference):
        return Digest.parse(reference)
    return validate_tag(reference)


def lookup_reference(reference: str) -> str | Digest:
    """A reference to look up (GET, HEAD, DELETE): one that is neither a tag nor digest-shaped
    cannot name anything, so it is MANIFEST_UNKNOWN (404), as clients and Distribution expect;
    a malformed digest stays DIGEST_INVALID."""
    if is_digest_reference(reference):
        return Digest.parse(reference)
    if not TAG_RE.fullmatch(reference):
        raise ManifestUnknown(f"manifest unknown: {reference[:200]!r} is not a tag or digest")
    return reference
