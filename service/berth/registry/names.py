"""Repository names, tags and references, validated by the OCI distribution spec's expressions.

A valid name is lowercase alphanumerics joined by ``.``, ``_``, ``__`` or dashes, in ``/``-separated
components: it can never contain ``..``, an empty component or a leading ``/``, so no name can
escape the storage root.
"""

from __future__ import annotations

import re

from .digest import Digest
from .errors import NameInvalid, TagInvalid

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


def is_digest_reference(reference: str) -> bool:
    return ":" in reference


def parse_reference(reference: str) -> str | Digest:
    """A manifest reference is a digest (contains ':') or a tag."""
    if is_digest_reference(reference):
        return Digest.parse(reference)
    return validate_tag(reference)
