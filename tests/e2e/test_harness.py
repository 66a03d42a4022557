"""The harness itself: the missing-tool rule and the layouts the other tests are built on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import Skopeo, require_tool, run
from .ocilayout import MT_INDEX, OCILayout, closure

pytestmark = pytest.mark.e2e


def test_missing_tool_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch):
    missing = "berth-e2e-no-such-tool"
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match=missing):
        require_tool(missing)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"CI=true.*{missing}"):
        require_tool(missing)


def test_layout_is_read_by_skopeo(tmp_path: Path, skopeo: Skopeo):
    """skopeo agrees with what ocilayout.py meant: platform, layer count, diff_ids."""
    layout = OCILayout(tmp_path / "img")
    image = layout.add_image(layers=3, arch="arm64")
    layout.tag(image.descriptor, "v1")
    index = layout.add_platform_index()
    layout.tag(index.descriptor, "multi")
    layout.verify()

    out = run([skopeo.path, "--policy", str(skopeo.policy), "inspect", f"oci:{layout.path}:v1"])
    info = json.loads(out.stdout)
    assert info["Architecture"] == "arm64"
    assert info["Os"] == "linux"
    assert info["Layers"] == [b["digest"] for b in image.blobs[1:]]
    config = json.loads(skopeo.inspect_raw(f"oci:{layout.path}:v1"))["config"]
    cfg = layout.manifest_json(config["digest"])
    assert len(cfg["rootfs"]["diff_ids"]) == 3
    assert json.loads(skopeo.inspect_raw(f"oci:{layout.path}:multi"))["mediaType"] == MT_INDEX
    assert len(closure(layout, index.digest)) == 1 + 2 * 4
