"""containerd pulls from the registry the way a kubelet does (``ctr images pull --plain-http``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import Containerd, Server, Skopeo
from .ocilayout import OCILayout

pytestmark = pytest.mark.e2e


def _images(containerd: Containerd) -> dict[str, tuple[str, str]]:
    """``ctr images ls`` as {ref: (media type, digest)}."""
    out = containerd.ctr("images", "ls").stdout.splitlines()
    rows: dict[str, tuple[str, str]] = {}
    for line in out[1:]:
        cols = line.split()
        if len(cols) >= 3:
            rows[cols[0]] = (cols[1], cols[2])
    return rows


def _content(containerd: Containerd) -> set[str]:
    return {
        line.split()[0]
        for line in containerd.ctr("content", "ls", "-q").stdout.splitlines()
        if line.strip()
    }


def test_ctr_pull_image(
    tmp_path: Path, registry: Server, skopeo: Skopeo, containerd: Containerd, repo: str
):
    src = OCILayout(tmp_path / "src")
    image = src.add_image(layers=3)
    src.tag(image.descriptor, "v1")
    skopeo.copy(f"oci:{src.path}:v1", f"docker://{registry.host}/{repo}:v1", "--preserve-digests")

    ref = f"{registry.host}/{repo}:v1"
    containerd.ctr("images", "pull", "--plain-http", "--platform", "linux/amd64", ref)

    images = _images(containerd)
    assert ref in images, images
    media_type, digest = images[ref]
    assert digest == image.digest
    assert media_type == "application/vnd.oci.image.manifest.v1+json"
    # Every blob was fetched and verified by containerd's content store.
    assert {image.digest, *(b["digest"] for b in image.blobs)} <= _content(containerd)
    containerd.ctr("images", "check", f"name=={ref}")
    containerd.ctr("images", "rm", "--sync", ref, check=False)


def test_ctr_pull_index_all_platforms(
    tmp_path: Path, registry: Server, skopeo: Skopeo, containerd: Containerd, repo: str
):
    src = OCILayout(tmp_path / "src")
    index = src.add_platform_index(("linux/amd64", "linux/arm64"), layers=2)
    src.tag(index.descriptor, "multi")
    skopeo.copy(
        f"oci:{src.path}:multi",
        f"docker://{registry.host}/{repo}:multi",
        "--all",
        "--preserve-digests",
    )

    ref = f"{registry.host}/{repo}:multi"
    containerd.ctr("images", "pull", "--plain-http", "--all-platforms", ref)
    media_type, digest = _images(containerd)[ref]
    assert digest == index.digest
    assert media_type == "application/vnd.oci.image.index.v1+json"
    wanted = {index.digest}
    for child in index.children:
        wanted |= {child.digest, *(b["digest"] for b in child.blobs)}
    assert wanted <= _content(containerd)
    containerd.ctr("images", "rm", "--sync", ref, check=False)


def test_ctr_pull_index_one_platform(
    tmp_path: Path, registry: Server, skopeo: Skopeo, containerd: Containerd, repo: str
):
    src = OCILayout(tmp_path / "src")
    index = src.add_platform_index(("linux/amd64", "linux/arm64"), layers=2)
    src.tag(index.descriptor, "multi")
    skopeo.copy(
        f"oci:{src.path}:multi",
        f"docker://{registry.host}/{repo}:multi",
        "--all",
        "--preserve-digests",
    )

    ref = f"{registry.host}/{repo}:multi"
    containerd.ctr("images", "pull", "--plain-http", "--platform", "linux/arm64", ref)
    assert _images(containerd)[ref][1] == index.digest
    arm, amd = sorted(
        index.children, key=lambda c: c.descriptor["platform"]["architecture"] != "arm64"
    )
    content = _content(containerd)
    assert {arm.digest, *(b["digest"] for b in arm.blobs)} <= content
    # Only the arm64 layers were fetched.
    assert not {b["digest"] for b in amd.blobs if b["mediaType"].endswith("gzip")} & content
    containerd.ctr("images", "rm", "--sync", ref, check=False)
