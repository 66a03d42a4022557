"""Helm charts as OCI artifacts: ``helm push`` to the registry, ``helm pull`` back, bytes equal."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from .conftest import Server, require_tool, run

pytestmark = pytest.mark.e2e

HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CONTENT = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _helm_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "helm-home"
    env = {
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "HELM_REGISTRY_CONFIG": str(home / "config" / "registry.json"),
        "HELM_REPOSITORY_CONFIG": str(home / "config" / "repositories.yaml"),
        "HELM_REPOSITORY_CACHE": str(home / "cache" / "repository"),
    }
    for value in env.values():
        Path(value).parent.mkdir(parents=True, exist_ok=True)
    return env


def test_helm_push_and_pull(tmp_path: Path, registry: Server):
    helm = require_tool("helm")
    env = _helm_env(tmp_path)
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    run([helm, "create", name], cwd=tmp_path, env=env)
    run(
        [helm, "package", name, "--version", "0.3.1", "-d", str(tmp_path / "pkg")],
        cwd=tmp_path,
        env=env,
    )
    chart = tmp_path / "pkg" / f"{name}-0.3.1.tgz"
    assert chart.is_file()

    pushed = run(
        [helm, "push", str(chart), f"oci://{registry.host}/charts", "--plain-http"], env=env
    )
    out = pushed.stdout + pushed.stderr
    match = re.search(r"Digest:\s*(sha256:[0-9a-f]{64})", out)
    assert match, out
    digest = match.group(1)

    # What helm wrote is an OCI manifest with helm's config and content types; no top-level
    # mediaType is required by the registry (older helm omits it).
    with registry.client() as c:
        r = c.get(f"/v2/charts/{name}/manifests/0.3.1", headers={"Accept": MT_MANIFEST})
        assert r.status_code == 200, r.text
        assert r.headers["Docker-Content-Digest"] == digest
        manifest = r.json()
        assert manifest["config"]["mediaType"] == HELM_CONFIG
        (layer,) = [m for m in manifest["layers"] if m["mediaType"] == HELM_CONTENT]
        r = c.get(f"/v2/charts/{name}/blobs/{layer['digest']}", follow_redirects=True)
        assert r.status_code == 200
        assert r.content == chart.read_bytes()
        r = c.get(f"/v2/charts/{name}/tags/list")
        assert r.status_code == 200
        assert r.json()["tags"] == ["0.3.1"]

    out_dir = tmp_path / "pulled"
    out_dir.mkdir()
    run(
        [
            helm,
            "pull",
            f"oci://{registry.host}/charts/{name}",
            "--version",
            "0.3.1",
            "--plain-http",
            "-d",
            str(out_dir),
        ],
        env=env,
    )
    pulled = out_dir / f"{name}-0.3.1.tgz"
    assert pulled.read_bytes() == chart.read_bytes()

    # By digest as well, the way a pinned chart dependency is fetched.
    out_dir2 = tmp_path / "pulled-by-digest"
    out_dir2.mkdir()
    run(
        [
            helm,
            "pull",
            f"oci://{registry.host}/charts/{name}@{digest}",
            "--plain-http",
            "-d",
            str(out_dir2),
        ],
        env=env,
    )
    (by_digest,) = out_dir2.glob("*.tgz")
    assert by_digest.read_bytes() == chart.read_bytes()
    shown = run(
        [
            helm,
            "show",
            "chart",
            f"oci://{registry.host}/charts/{name}",
            "--version",
            "0.3.1",
            "--plain-http",
        ],
        env=env,
    )
    assert f"name: {name}" in shown.stdout
