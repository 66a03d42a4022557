"""Interoperability with CNCF Distribution 2.8.2 on the SAME storage directory: what one
wrote, the other serves, byte for byte (the layout is Distribution's)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from .conftest import (
    DistributionFactory,
    RegistryFactory,
    Server,
    Skopeo,
    free_port,
    push_blob,
    require_tool,
    run,
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


def test_helm_push_distribution_pull_berth(tmp_path: Path, shared_pair, repo: str):
    """A chart manifest (no top-level mediaType) that Distribution stored, served by berth."""
    helm = require_tool("helm")
    berth, dist = shared_pair
    env = {
        "HELM_CACHE_HOME": str(tmp_path / "h" / "cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "h" / "config"),
        "HELM_DATA_HOME": str(tmp_path / "h" / "data"),
    }
    name = f"interop-{uuid.uuid4().hex[:8]}"
    run([helm, "create", name], cwd=tmp_path, env=env)
    run([helm, "package", name, "-d", str(tmp_path / "pkg")], cwd=tmp_path, env=env)
    (chart,) = (tmp_path / "pkg").glob("*.tgz")
    run([helm, "push", str(chart), f"oci://{dist.host}/{repo}", "--plain-http"], env=env)
    with berth.client() as c:
        r = c.get(f"/v2/{repo}/{name}/manifests/0.1.0", headers={"Accept": MT_MANIFEST})
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"].split(";")[0] == MT_MANIFEST
        assert "mediaType" not in r.json()
    out = tmp_path / "out"
    out.mkdir()
    run(
        [
            helm,
            "pull",
            f"oci://{berth.host}/{repo}/{name}",
            "--version",
            "0.1.0",
            "--plain-http",
            "-d",
            str(out),
        ],
        env=env,
    )
    assert (out / chart.name).read_bytes() == chart.read_bytes()


def test_distribution_gc_keeps_what_berth_wrote(
    tmp_path: Path,
    target_factory: RegistryFactory,
    distribution_factory: DistributionFactory,
    skopeo: Skopeo,
    repo: str,
):
    """`docker-registry garbage-collect` over a directory the registry under test wrote keeps
    every blob a manifest uses (it reads the same links), and removes an unreferenced one."""
    exe = require_tool("docker-registry")
    root = distribution_factory.new_root()
    server = target_factory.start(root=root)
    try:
        src = OCILayout(tmp_path / "src")
        image = src.add_image(layers=2)
        src.tag(image.descriptor, "v1")
        index = src.add_platform_index(layers=1)
        src.tag(index.descriptor, "multi")
        skopeo.copy(f"oci:{src.path}:v1", f"docker://{server.host}/{repo}:v1", "--preserve-digests")
        skopeo.copy(
            f"oci:{src.path}:multi",
            f"docker://{server.host}/{repo}:multi",
            "--all",
            "--preserve-digests",
        )
        with server.client() as c:
            orphan = push_blob(c, repo, b"nobody uses this blob " + repo.encode())
        config = distribution_factory.write_config(root, free_port())
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        gc = subprocess.run(
            [exe, "garbage-collect", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        assert gc.returncode == 0, gc.stdout + gc.stderr
        hexpart = orphan.split(":")[1]
        blob = root / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"
        assert not blob.exists(), "Distribution's GC should have removed the unreferenced blob"
        _pull_and_compare(skopeo, src, server, f"{repo}:v1", image.digest, tmp_path / "a")
        _pull_and_compare(
            skopeo, src, server, f"{repo}:multi", index.digest, tmp_path / "b", "--all"
        )
    finally:
        server.stop()


def test_repository_isolation_on_shared_directory(shared_pair, repo: str):
    """A blob or manifest Distribution linked into one repository is not served from another
    repository by the registry under test (the blob store is global; the links are not)."""
    berth, dist = shared_pair
    data = b"only in repository a " + repo.encode()
    with dist.client() as cd, berth.client() as cb:
        digest = push_blob(cd, f"{repo}/a", data)
        assert cb.get(f"/v2/{repo}/a/blobs/{digest}", follow_redirects=True).content == data
        r = cb.get(f"/v2/{repo}/b/blobs/{digest}", follow_redirects=True)
        assert r.status_code == 404, (r.status_code, r.text[:200])
        assert r.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
        assert cb.head(f"/v2/{repo}/b/blobs/{digest}").status_code == 404
        # A manifest that needs that blob cannot be pushed to b through berth either.
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MT_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": digest,
                    "size": len(data),
                },
                "layers": [],
            }
        ).encode()
        r = cb.put(
            f"/v2/{repo}/b/manifests/x", content=manifest, headers={"Content-Type": MT_MANIFEST}
        )
        assert r.status_code == 400, (r.status_code, r.text)
        assert r.json()["errors"][0]["code"] in ("MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN")


def test_tag_delete_seen_by_distribution(tmp_path: Path, shared_pair, skopeo: Skopeo, repo: str):
    """OCI 1.1 tag deletion through the registry under test removes the tag for Distribution
    too, and leaves the manifest and the other tag alone."""
    berth, dist = shared_pair
    if berth.kind == "distribution":
        pytest.skip("Distribution 2.8.2 does not delete tags by name")
    src = OCILayout(tmp_path / "src")
    image = src.add_image(layers=1)
    src.tag(image.descriptor, "v1")
    for tag in ("keep", "drop"):
        skopeo.copy(
            f"oci:{src.path}:v1", f"docker://{dist.host}/{repo}:{tag}", "--preserve-digests"
        )
    accept = {"Accept": MT_MANIFEST}
    with berth.client() as cb, dist.client() as cd:
        r = cb.delete(f"/v2/{repo}/manifests/drop")
        assert r.status_code == 202, (r.status_code, r.text)
        assert cd.get(f"/v2/{repo}/manifests/drop", headers=accept).status_code == 404
        assert cd.get(f"/v2/{repo}/tags/list").json()["tags"] == ["keep"]
        r = cd.get(f"/v2/{repo}/manifests/keep", headers=accept)
        assert r.headers["Docker-Content-Digest"] == image.digest
        assert cd.get(f"/v2/{repo}/manifests/{image.digest}", headers=accept).status_code == 200
