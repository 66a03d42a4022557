"""Interoperability with CNCF Distribution 2.8.2 on the SAME storage directory: what one
wrote, the other serves, byte for byte (the layout is Distribution's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import (
    Server,
    Skopeo,
    push_blob,
)
from .ocilayout import MT_INDEX, MT_MANIFEST, OCILayout, closure

pytestmark = pytest.mark.e2e


def _pull_and_compare(
    skopeo: Skopeo, src: OCILayout, server: Server, ref: str, root_digest: str, dst: Path, *flags
):
    remote = f"docker://{server.host}/{ref}"
    raw = skopeo.inspect_raw(remote)
    assert raw == src.read_blob(root_digest)
    out = OCILayout(dst)
    skopeo.copy(remote, f"oci:{out.path}:back", "--preserve-digests", *flags)
    assert out.resolve("back")["digest"] == root_digest
    wanted = closure(src, root_digest)
    assert closure(out, root_digest) == wanted
    for digest in wanted:
        assert out.read_blob(digest) == src.read_blob(digest), digest


def test_push_distribution_pull_berth(tmp_path: Path, shared_pair, skopeo: Skopeo, repo: str):
    berth, dist = shared_pair
    src = OCILayout(tmp_path / "src")
    image = src.add_image(layers=3)
    src.tag(image.descriptor, "v1")
    index = src.add_platform_index(("linux/amd64", "linux/arm64"), layers=2)
    src.tag(index.descriptor, "multi")
    skopeo.copy(f"oci:{src.path}:v1", f"docker://{dist.host}/{repo}:v1", "--preserve-digests")
    skopeo.copy(
        f"oci:{src.path}:multi", f"docker://{dist.host}/{repo}:multi", "--all", "--preserve-digests"
    )

    _pull_and_compare(skopeo, src, berth, f"{repo}:v1", image.digest, tmp_path / "a")
    _pull_and_compare(skopeo, src, berth, f"{repo}:multi", index.digest, tmp_path / "b", "--all")
    with berth.client() as c:
        r = c.get(f"/v2/{repo}/tags/list")
        assert r.status_code == 200, r.text
        assert sorted(r.json()["tags"]) == ["multi", "v1"]
        r = c.head(f"/v2/{repo}/manifests/multi", headers={"Accept": MT_INDEX})
        assert r.status_code == 200
        assert r.headers["Docker-Content-Digest"] == index.digest
        r = c.get("/v2/_catalog")
        assert r.status_code == 200
        assert repo in r.json()["repositories"]


def test_push_berth_pull_distribution(tmp_path: Path, shared_pair, skopeo: Skopeo, repo: str):
    berth, dist = shared_pair
    src = OCILayout(tmp_path / "src")
    image = src.add_image(layers=3)
    src.tag(image.descriptor, "v1")
    index = src.add_platform_index(("linux/amd64", "linux/arm64"), layers=2)
    src.tag(index.descriptor, "multi")
    skopeo.copy(f"oci:{src.path}:v1", f"docker://{berth.host}/{repo}:v1", "--preserve-digests")
    skopeo.copy(
        f"oci:{src.path}:multi",
        f"docker://{berth.host}/{repo}:multi",
        "--all",
        "--preserve-digests",
    )

    _pull_and_compare(skopeo, src, dist, f"{repo}:v1", image.digest, tmp_path / "a")
    _pull_and_compare(skopeo, src, dist, f"{repo}:multi", index.digest, tmp_path / "b", "--all")
    with dist.client() as c:
        r = c.get(f"/v2/{repo}/tags/list")
        assert r.status_code == 200, r.text
        assert sorted(r.json()["tags"]) == ["multi", "v1"]
        r = c.get(f"/v2/{repo}/manifests/v1", headers={"Accept": MT_MANIFEST})
        assert r.headers["Docker-Content-Digest"] == image.digest
        assert r.content == image.body


def test_blob_written_by_berth_listed_in_distribution_layout(
    shared_pair, repo: str, tmp_path: Path
):
    """A raw blob upload through the registry under test is linked where Distribution looks."""
    berth, dist = shared_pair
    data = b"interop-" + repo.encode() * 1000
    with berth.client() as c:
        digest = push_blob(c, repo, data)
    hexpart = digest.split(":")[1]
    v2 = berth.root / "docker" / "registry" / "v2"
    assert (v2 / "blobs" / "sha256" / hexpart[:2] / hexpart / "data").read_bytes() == data
    link = v2 / "repositories" / repo / "_layers" / "sha256" / hexpart / "link"
    assert link.read_text() == digest
    with dist.client() as c:
        r = c.get(f"/v2/{repo}/blobs/{digest}")
        assert r.status_code == 200
        assert r.content == data


def test_manifest_delete_seen_by_the_other(tmp_path: Path, shared_pair, skopeo: Skopeo, repo):
    berth, dist = shared_pair
    src = OCILayout(tmp_path / "src")
    one = src.add_image(layers=1)
    two = src.add_image(layers=1)
    src.tag(one.descriptor, "one")
    src.tag(two.descriptor, "two")
    skopeo.copy(f"oci:{src.path}:one", f"docker://{dist.host}/{repo}:one", "--preserve-digests")
    skopeo.copy(f"oci:{src.path}:two", f"docker://{berth.host}/{repo}:two", "--preserve-digests")
    accept = {"Accept": MT_MANIFEST}
    with berth.client() as cb, dist.client() as cd:
        # Both read both first (so any cache is warm), then each deletes what the other wrote.
        for c in (cb, cd):
            for img in (one, two):
                assert (
                    c.get(f"/v2/{repo}/manifests/{img.digest}", headers=accept).status_code == 200
                )
        r = cb.delete(f"/v2/{repo}/manifests/{one.digest}")
        assert r.status_code == 202, r.text
        r = cd.delete(f"/v2/{repo}/manifests/{two.digest}")
        assert r.status_code == 202, r.text
        for c in (cb, cd):
            for img in (one, two):
                r = c.get(f"/v2/{repo}/manifests/{img.digest}", headers=accept)
                assert r.status_code == 404, (c.base_url, img.digest, r.status_code, r.text)
                assert json.loads(r.content)["errors"][0]["code"] == "MANIFEST_UNKNOWN"
