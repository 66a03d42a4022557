"""What replicas on one storage directory must agree on at once (no sticky sessions, no shared
process state): tag moves, deletes, cancelled uploads; plus the byte-level behaviour pull
clients rely on (ranged blob reads, large layers)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import tarfile
from pathlib import Path

import httpx
import pytest

from .conftest import Server, Skopeo, location_path, push_blob, within_staleness
from .ocilayout import MT_LAYER_GZIP, MT_MANIFEST, OCILayout, canonical_json, sha256_digest

pytestmark = pytest.mark.e2e


@pytest.fixture
def pair(replica_pair: tuple[Server, Server]) -> tuple[Server, Server]:
    return replica_pair


def _put_manifest(c: httpx.Client, repo: str, ref: str, body: bytes) -> None:
    r = c.put(f"/v2/{repo}/manifests/{ref}", content=body, headers={"Content-Type": MT_MANIFEST})
    assert r.status_code == 201, (r.status_code, r.text)


def _tiny_image(c: httpx.Client, repo: str, label: str) -> bytes:
    """Push a config + one layer by hand; return the manifest bytes (not pushed)."""
    layer = os.urandom(256)
    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": {"Labels": {"l": label}},
        }
    )
    push_blob(c, repo, config)
    push_blob(c, repo, layer)
    return canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256_digest(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": MT_LAYER_GZIP, "digest": sha256_digest(layer), "size": len(layer)}
            ],
        }
    )


def test_tag_move_is_seen_by_other_replica(pair, repo: str):
    a, b = pair
    accept = {"Accept": MT_MANIFEST}
    with a.client() as ca, b.client() as cb:
        one = _tiny_image(ca, repo, "one")
        two = _tiny_image(ca, repo, "two")
        _put_manifest(ca, repo, "latest", one)
        r = cb.get(f"/v2/{repo}/manifests/latest", headers=accept)  # B has seen "latest"
        assert r.status_code == 200
        assert r.content == one
        _put_manifest(ca, repo, "latest", two)
        for _ in range(3):
            r = cb.get(f"/v2/{repo}/manifests/latest", headers=accept)
            assert r.status_code == 200
            assert r.headers["Docker-Content-Digest"] == sha256_digest(two)
            assert r.content == two
            r = cb.head(f"/v2/{repo}/manifests/latest", headers=accept)
            assert r.headers["Docker-Content-Digest"] == sha256_digest(two)


def test_blob_delete_is_seen_by_other_replica(pair, repo: str):
    a, b = pair
    data = os.urandom(10_000)
    with a.client() as ca, b.client() as cb:
        digest = push_blob(ca, repo, data)
        # B reads it first, so whatever B caches about the blob is warm.
        assert cb.head(f"/v2/{repo}/blobs/{digest}").status_code == 200
        assert cb.get(f"/v2/{repo}/blobs/{digest}", follow_redirects=True).content == data
        r = ca.delete(f"/v2/{repo}/blobs/{digest}")
        assert r.status_code == 202, (r.status_code, r.text)
        assert ca.head(f"/v2/{repo}/blobs/{digest}").status_code == 404  # at once on A
        # B may trust its link cache for cache.link_staleness_seconds, no longer.
        within_staleness(lambda: cb.head(f"/v2/{repo}/blobs/{digest}").status_code == 404)
        r = cb.get(f"/v2/{repo}/blobs/{digest}", follow_redirects=True)
        assert r.status_code == 404, (r.status_code, r.text[:200])
        assert r.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_manifest_delete_is_seen_by_other_replica(pair, repo: str):
    a, b = pair
    accept = {"Accept": MT_MANIFEST}
    with a.client() as ca, b.client() as cb:
        body = _tiny_image(ca, repo, "del")
        digest = sha256_digest(body)
        _put_manifest(ca, repo, "v1", body)
        assert cb.get(f"/v2/{repo}/manifests/{digest}", headers=accept).status_code == 200
        assert cb.get(f"/v2/{repo}/manifests/v1", headers=accept).status_code == 200
        r = ca.delete(f"/v2/{repo}/manifests/{digest}")
        assert r.status_code == 202, (r.status_code, r.text)
        # Tags are never cached: gone on B at once; the revision within the staleness bound.
        r = cb.get(f"/v2/{repo}/manifests/v1", headers=accept)
        assert r.status_code == 404, (r.status_code, r.text[:200])
        within_staleness(
            lambda: cb.get(f"/v2/{repo}/manifests/{digest}", headers=accept).status_code == 404
        )
        for ref in (digest, "v1"):
            r = cb.get(f"/v2/{repo}/manifests/{ref}", headers=accept)
            assert r.status_code == 404, (ref, r.status_code, r.text[:200])
            r = cb.head(f"/v2/{repo}/manifests/{ref}", headers=accept)
            assert r.status_code == 404, (ref, r.status_code)


def test_upload_cancelled_on_other_replica(pair, repo: str):
    a, b = pair
    with a.client() as ca, b.client() as cb:
        r = ca.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202
        r = ca.patch(
            r.headers["Location"],
            content=b"x" * 1000,
            headers={"Content-Type": "application/octet-stream", "Content-Range": "0-999"},
        )
        assert r.status_code == 202
        loc = location_path(r.headers["Location"])
        r = cb.delete(loc)
        assert r.status_code == 204, (r.status_code, r.text)
        r = ca.get(loc)
        assert r.status_code == 404, (r.status_code, r.text)
        assert r.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
        r = ca.put(
            f"{loc}{'&' if '?' in loc else '?'}digest={sha256_digest(b'x' * 1000)}",
            content=b"",
        )
        assert r.status_code == 404, (r.status_code, r.text)


def test_ranged_blob_reads(registry: Server, repo: str):
    """containerd resumes interrupted layer downloads with Range requests."""
    data = random.randbytes(300_000)
    with registry.client(follow_redirects=True) as c:
        digest = push_blob(c, repo, data)
        r = c.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=1000-1999"})
        assert r.status_code == 206, (r.status_code, dict(r.headers))
        assert r.content == data[1000:2000]
        assert r.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
        r = c.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=299000-"})
        assert r.status_code == 206
        assert r.content == data[299000:]


def test_large_layer_round_trip(tmp_path: Path, registry: Server, skopeo: Skopeo, repo: str):
    """A 24 MiB incompressible layer pushed and pulled by skopeo, bytes intact."""
    src = OCILayout(tmp_path / "src")
    big = os.urandom(24 * 1024 * 1024)
    # Stored (level 0) gzip: fast to make, and still a valid tar+gzip layer.
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("big.bin")
        info.size = len(big)
        tar.addfile(info, io.BytesIO(big))
    tar_bytes = raw.getvalue()
    layer = gzip.compress(tar_bytes, compresslevel=0, mtime=0)
    layer_desc = src.add_blob(layer, MT_LAYER_GZIP)
    src.diff_ids[layer_desc["digest"]] = "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    image = src.add_image(layers=1, base=[layer_desc])
    src.tag(image.descriptor, "big")
    skopeo.copy(f"oci:{src.path}:big", f"docker://{registry.host}/{repo}:big", "--preserve-digests")
    dst = OCILayout(tmp_path / "dst")
    skopeo.copy(f"docker://{registry.host}/{repo}:big", f"oci:{dst.path}:big", "--preserve-digests")
    assert dst.read_blob(layer_desc["digest"]) == layer
