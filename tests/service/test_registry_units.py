"""Unit tests for the registry layer's pure parts: digests, hashers, manifests, caches."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from berth.registry import mediatypes as mt
from berth.registry.cache import LRUCache
from berth.registry.catalog import paginate
from berth.registry.digest import Digest, new_hasher, restore_hasher
from berth.registry.errors import DigestInvalid, ManifestInvalid
from berth.registry.manifest import parse_manifest

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_hash_state_survives_a_round_trip_through_storage(algorithm: str) -> None:
    data = os.urandom(1_000_003)
    first = new_hasher(algorithm)
    first.update(data[:333_333])
    state = first.state()
    assert state is not None, "OpenSSL's resumable hashing should be available here"
    resumed = restore_hasher(algorithm, state)
    assert resumed is not None
    resumed.update(data[333_333:])
    assert resumed.hexdigest() == hashlib.new(algorithm, data).hexdigest()


def test_foreign_or_corrupt_hash_state_is_refused() -> None:
    state = new_hasher("sha256").state()
    assert state is not None
    assert restore_hasher("sha256", b"go-sha256-state" + state) is None
    assert restore_hasher("sha256", state[:-1]) is None
    assert restore_hasher("sha512", state) is None


def test_digest_parse() -> None:
    assert str(Digest.parse(D1)) == D1
    for bad in ("sha256:" + "A" * 64, "sha256:abc", "md5:" + "a" * 32, "sha512:" + "a" * 64, ""):
        with pytest.raises(DigestInvalid):
            Digest.parse(bad)


def _manifest(**extra: object) -> bytes:
    body = {
        "schemaVersion": 2,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": D1,
            "size": 2,
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": D2, "size": 3}
        ],
    }
    body.update(extra)
    return json.dumps(body).encode()


def test_manifest_type_is_inferred_when_absent() -> None:
    assert parse_manifest(_manifest()).media_type == mt.OCI_MANIFEST
    index = {"schemaVersion": 2, "manifests": []}
    assert parse_manifest(json.dumps(index).encode()).media_type == mt.OCI_INDEX
    # Without mediaType the shape decides; a Content-Type naming another type is refused (a
    # stored manifest is read back without one, so it would change type on the next load).
    with pytest.raises(ManifestInvalid):
        parse_manifest(_manifest(), mt.DOCKER_MANIFEST)
    assert parse_manifest(_manifest(), mt.OCI_MANIFEST).media_type == mt.OCI_MANIFEST


def test_manifest_references_and_artifact_type() -> None:
    m = parse_manifest(_manifest(mediaType=mt.OCI_MANIFEST))
    assert [str(d.digest) for d in m.blob_references()] == [D1, D2]
    assert m.referrer_artifact_type() == "application/vnd.oci.image.config.v1+json"
    art = parse_manifest(_manifest(artifactType="application/x.sig"))
    assert art.referrer_artifact_type() == "application/x.sig"


def test_foreign_layers_are_not_required() -> None:
    body = json.loads(_manifest(mediaType=mt.DOCKER_MANIFEST))
    body["layers"][0]["mediaType"] = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    body["layers"][0]["urls"] = ["https://example.com/layer"]
    m = parse_manifest(json.dumps(body).encode(), mt.DOCKER_MANIFEST)
    assert [str(d.digest) for d in m.blob_references()] == [D1]


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"schemaVersion": 1}',
        _manifest(schemaVersion=1),
        _manifest(mediaType="application/vnd.docker.distribution.manifest.v1+prettyjws"),
        _manifest(mediaType="text/plain"),
        _manifest(layers="nope"),
        _manifest(config={"mediaType": "x", "digest": "sha256:short", "size": 1}),
        _manifest(config={"mediaType": "x", "digest": D1, "size": -1}),
        _manifest(config={"mediaType": "x", "digest": D1, "size": True}),
        _manifest(annotations={"a": 1}),
        _manifest(subject="not a descriptor"),
        b"[" * 100_000,
    ],
)
def test_invalid_manifests(raw: bytes) -> None:
    with pytest.raises(ManifestInvalid):
        parse_manifest(raw)


def test_lru_cache_is_bounded_by_weight() -> None:
    cache: LRUCache[str, bytes] = LRUCache(10)
    cache.put("a", b"aaaa", 4)
    cache.put("b", b"bbbb", 4)
    assert cache.get("a") == b"aaaa"  # a becomes most recent
    cache.put("c", b"cccc", 4)  # evicts b
    assert cache.get("b") is None
    assert cache.get("a") == b"aaaa" and cache.get("c") == b"cccc"
    cache.put("huge", b"x" * 20, 20)  # larger than the whole cache: not stored
    assert cache.get("huge") is None and len(cache) == 2


def test_paginate() -> None:
    items = ["a", "b", "c", "d"]
    assert paginate(items, 2, None) == (["a", "b"], True)
    assert paginate(items, 2, "b") == (["c", "d"], False)
    assert paginate(items, None, "a") == (["b", "c", "d"], False)
    assert paginate(items, 0, None) == ([], True)
