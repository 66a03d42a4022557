"""skopeo pushes images made locally to the registry and pulls them back, bit for bit."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

from .conftest import Server, Skopeo
from .ocilayout import MT_INDEX, MT_MANIFEST, OCILayout, closure, sha256_digest

pytestmark = pytest.mark.e2e


def _assert_same_content(src: OCILayout, dst: OCILayout, root_digest: str) -> None:
    """Every blob reachable from ``root_digest`` is in ``dst`` with identical bytes."""
    wanted = closure(src, root_digest)
    assert wanted == closure(dst, root_digest)
    for digest in wanted:
        assert dst.read_blob(digest) == src.read_blob(digest), digest
        assert sha256_digest(dst.read_blob(digest)) == digest


def test_multilayer_image_round_trip(tmp_path: Path, registry: Server, skopeo: Skopeo, repo: str):
    src = OCILayout(tmp_path / "src")
    image = src.add_image(layers=4, files_per_layer=5)
    src.tag(image.descriptor, "v1")
    remote = f"docker://{registry.host}/{repo}:v1"

    skopeo.copy(f"oci:{src.path}:v1", remote, "--preserve-digests")

    raw = skopeo.inspect_raw(remote)
    assert raw == image.body
    assert hashlib.sha256(raw).hexdigest() == image.digest.split(":")[1]
    # The registry reports the same digest and type over plain HTTP as well.
    with registry.client() as c:
        r = c.get(f"/v2/{repo}/manifests/v1", headers={"Accept": MT_MANIFEST})
        assert r.status_code == 200, r.text
        assert r.headers["Docker-Content-Digest"] == image.digest
        assert r.headers["Content-Type"].split(";")[0] == MT_MANIFEST
        r = c.head(f"/v2/{repo}/manifests/{image.digest}", headers={"Accept": MT_MANIFEST})
        assert r.status_code == 200
        assert int(r.headers["Content-Length"]) == len(image.body)
        for blob in image.blobs:
            r = c.head(f"/v2/{repo}/blobs/{blob['digest']}", follow_redirects=True)
            assert r.status_code == 200, blob
            assert int(r.headers["Content-Length"]) == blob["size"]

    dst = OCILayout(tmp_path / "dst")
    skopeo.copy(remote, f"oci:{dst.path}:back", "--preserve-digests")
    assert dst.resolve("back")["digest"] == image.digest
    assert dst.resolve("back")["mediaType"] == MT_MANIFEST
    _assert_same_content(src, dst, image.digest)
    # skopeo's view of the pulled copy agrees too.
    assert skopeo.inspect_raw(f"oci:{dst.path}:back") == image.body


def test_two_platform_index_copy_all(tmp_path: Path, registry: Server, skopeo: Skopeo, repo: str):
    src = OCILayout(tmp_path / "src")
    index = src.add_platform_index(("linux/amd64", "linux/arm64"), layers=2)
    src.tag(index.descriptor, "multi")
    remote = f"docker://{registry.host}/{repo}:multi"

    skopeo.copy(f"oci:{src.path}:multi", remote, "--all", "--preserve-digests")

    raw = skopeo.inspect_raw(remote)
    assert raw == index.body
    doc = json.loads(raw)
    assert doc["mediaType"] == MT_INDEX
    assert {(m["platform"]["os"], m["platform"]["architecture"]) for m in doc["manifests"]} == {
        ("linux", "amd64"),
        ("linux", "arm64"),
    }
    with registry.client() as c:
        r = c.get(f"/v2/{repo}/manifests/multi", headers={"Accept": MT_INDEX})
        assert r.status_code == 200
        assert r.headers["Docker-Content-Digest"] == index.digest
        assert r.headers["Content-Type"].split(";")[0] == MT_INDEX
        for child in index.children:  # every platform's manifest is there by digest
            r = c.get(f"/v2/{repo}/manifests/{child.digest}", headers={"Accept": MT_MANIFEST})
            assert r.status_code == 200, child.descriptor
            assert r.content == child.body

    dst = OCILayout(tmp_path / "dst")
    skopeo.copy(remote, f"oci:{dst.path}:back", "--all", "--preserve-digests")
    assert dst.resolve("back")["digest"] == index.digest
    _assert_same_content(src, dst, index.digest)
    assert len(closure(dst, index.digest)) == 1 + 2 * (
        1 + 1 + 2
    )  # index + 2 * (manifest, config, 2 layers)


def test_single_platform_pull_from_index(
    tmp_path: Path, registry: Server, skopeo: Skopeo, repo: str
):
    """Without --all, a client resolves the index to one platform's manifest."""
    src = OCILayout(tmp_path / "src")
    index = src.add_platform_index(("linux/amd64", "linux/arm64"), layers=1)
    src.tag(index.descriptor, "multi")
    remote = f"docker://{registry.host}/{repo}:multi"
    skopeo.copy(f"oci:{src.path}:multi", remote, "--all", "--preserve-digests")

    arm = next(c for c in index.children if c.descriptor["platform"]["architecture"] == "arm64")
    dst = OCILayout(tmp_path / "dst")
    skopeo.copy(remote, f"oci:{dst.path}:arm", "--override-arch", "arm64", "--preserve-digests")
    assert dst.resolve("arm")["digest"] == arm.digest
    _assert_same_content(src, dst, arm.digest)


def test_blob_bytes_served_exactly(tmp_path: Path, registry: Server, skopeo: Skopeo, repo: str):
    """GET of every blob of a pushed image returns exactly its bytes (redirects followed)."""
    src = OCILayout(tmp_path / "src")
    image = src.add_image(layers=2)
    src.tag(image.descriptor, "v1")
    skopeo.copy(f"oci:{src.path}:v1", f"docker://{registry.host}/{repo}:v1", "--preserve-digests")
    with httpx.Client(base_url=registry.url, timeout=30, follow_redirects=True) as c:
        for blob in image.blobs:
            r = c.get(f"/v2/{repo}/blobs/{blob['digest']}")
            assert r.status_code == 200
            assert r.content == src.read_blob(blob["digest"])
