"""A real upstream registry for pull-through tests: Debian's ``docker-registry`` (CNCF
Distribution 2.8.2) with htpasswd (Basic) auth, on 127.0.0.1, filled over its HTTP API."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from berth.auth.htpasswd import set_user
from s3_servers import in_ci

USER, PASSWORD = "mirror", "mirror-upstream-pw"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class Upstream:
    proc: subprocess.Popen[bytes]
    port: int
    root: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=(USER, PASSWORD), timeout=60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


def require_distribution() -> str:
    exe = shutil.which("docker-registry")
    if exe is None:
        import pytest

        reason = "docker-registry (Debian's Distribution 2.8.2) not found"
        if in_ci():
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    return exe


def start_distribution() -> Upstream:
    """Distribution 2.8.2 with htpasswd auth (user ``USER``) on a free port."""
    exe = require_distribution()
    root = Path(tempfile.mkdtemp(prefix="berth-upstream-"))
    htpasswd = root / "htpasswd"
    set_user(htpasswd, USER, PASSWORD, cost=4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = root / "config.yml"
    config.write_text(
        json.dumps(
            {
                "version": 0.1,
                "log": {"level": "warn", "accesslog": {"disabled": True}},
                "storage": {
                    "filesystem": {"rootdirectory": str(root / "data")},
                    "delete": {"enabled": True},
                    "maintenance": {"uploadpurging": {"enabled": False}},
                },
                "http": {"addr": f"127.0.0.1:{port}", "secret": "upstream-test-secret"},
                "auth": {"htpasswd": {"realm": "upstream", "path": str(htpasswd)}},
            }
        )
    )
    log = root / "registry.log"
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [exe, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    upstream = Upstream(proc, port, root, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{upstream.url}/v2/", timeout=2).status_code == 401:
                return upstream
        except httpx.HTTPError:
            time.sleep(0.1)
    upstream.stop()
    raise RuntimeError("docker-registry did not start")


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(c: httpx.Client, repo: str, data: bytes) -> str:
    digest = digest_of(data)
    r = c.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, (r.status_code, r.text)
    location = httpx.URL(r.headers["Location"])
    r = c.put(str(location.copy_merge_params({"digest": digest})), content=data)
    assert r.status_code == 201, (r.status_code, r.text)
    return digest


def push_image(
    c: httpx.Client, repo: str, tag: str, layers: list[bytes], seed: str = ""
) -> tuple[str, bytes]:
    """Push config + layers + an OCI manifest; returns (manifest digest, manifest bytes)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    descriptors = [
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": push_blob(c, repo, layer),
            "size": len(layer),
        }
        for layer in layers
    ]
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": push_blob(c, repo, config),
                "size": len(config),
            },
            "layers": descriptors,
        }
    ).encode()
    r = c.put(
        f"/v2/{repo}/manifests/{tag}", content=manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    assert r.status_code == 201, (r.status_code, r.text)
    return digest_of(manifest), manifest
