"""Reading a stored manifest for marking: what GC needs to know is which digests it references.

Berth's parser (``registry.manifest.parse_manifest``) accepts what Berth serves. Storage can hold
more: a Distribution directory or bucket may contain Docker schema 1 manifests
(``application/vnd.docker.distribution.manifest.v1+json`` / ``…+prettyjws``), which name their
layers in ``fsLayers[].blobSum`` and have no config. GC reads those too, so their layers are kept.

Anything else that does not parse raises ``ManifestInvalid``: GC cannot know what it references
and fails safe (docs/gc.md, "Unreadable manifests").
"""

from __future__ import annotations

import json
from typing import Any

from ..registry import mediatypes as mt
from ..registry.digest import Digest
from ..registry.errors import DigestInvalid, ManifestInvalid
from ..registry.manifest import Descriptor, Manifest, parse_manifest

# The media type schema 1 implies for every fsLayers entry (they are gzipped tar layers).
SCHEMA1_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def parse_schema1(raw: bytes) -> Manifest:
    """A Docker schema 1 manifest (signed or not), as a Manifest whose layers are its blobSums.

    Sizes are unknown in schema 1 (reported as 0); the signature is not checked (GC only needs
    the references, and a blob named by a bad signature is still kept: the safe direction)."""
    try:
        body = json.loads(raw, parse_constant=_not_json)
    except (ValueError, RecursionError):
        raise ManifestInvalid("manifest is not valid JSON") from None
    if not isinstance(body, dict) or type(body.get("schemaVersion")) is not int:
        raise ManifestInvalid("not a schema 1 manifest")
    if body["schemaVersion"] != 1:
        raise ManifestInvalid("not a schema 1 manifest")
    media_type = body.get("mediaType")
    if media_type is None:
        media_type = mt.DOCKER_SCHEMA1_SIGNED if "signatures" in body else mt.DOCKER_SCHEMA1
    if media_type not in (mt.DOCKER_SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED):
        raise ManifestInvalid(f"schema 1 manifest with media type {media_type!r}")
    fs_layers = body.get("fsLayers")
    if not isinstance(fs_layers, list):
        raise ManifestInvalid("schema 1 fsLayers must be a list")
    layers: list[Descriptor] = []
    seen: set[Digest] = set()
    for i, entry in enumerate(fs_layers):
        blob_sum = entry.get("blobSum") if isinstance(entry, dict) else None
        try:
            digest = Digest.parse(blob_sum if isinstance(blob_sum, str) else "")
        except DigestInvalid:
            raise ManifestInvalid(f"fsLayers[{i}] has an invalid blobSum") from None
        if digest not in seen:  # schema 1 repeats the empty layer
            seen.add(digest)
            layers.append(Descriptor(SCHEMA1_LAYER, digest, 0))
    return Manifest(media_type=media_type, layers=tuple(layers))


def parse_for_marking(raw: bytes) -> Manifest:
    """Every manifest kind Berth serves, plus Docker schema 1; ``ManifestInvalid`` otherwise."""
    try:
        return parse_manifest(raw)
    except ManifestInvalid as exc:
        try:
            return parse_schema1(raw)
        except ManifestInvalid:
            raise exc from None
