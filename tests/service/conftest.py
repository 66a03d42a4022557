"""Fixtures for registry tests through the ASGI app (no network, no server process)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from berth.app import create_app
from berth.config import Settings


def make_settings(root: Path, **storage: Any) -> Settings:
    return Settings(
        storage={"filesystem": {"root": root}, **storage},
        observability={"access_log": False},
    )


@pytest.fixture
def storage_root(tmp_path: Path) -> Path:
    return tmp_path / "registry"


@pytest.fixture
async def client(storage_root: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(storage_root))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as c:
        yield c


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def push_blob(client: httpx.AsyncClient, name: str, data: bytes) -> str:
    digest = sha256(data)
    r = await client.post(f"/v2/{name}/blobs/uploads/", params={"digest": digest}, content=data)
    assert r.status_code == 201, r.text
    return digest


async def push_image(
    client: httpx.AsyncClient,
    name: str,
    tag: str | None = "latest",
    layers: int = 2,
    seed: bytes = b"x",
    media_type: str = "application/vnd.oci.image.manifest.v1+json",
    extra: dict[str, Any] | None = None,
) -> tuple[str, bytes]:
    """Push a small image (config + layers + manifest); returns (digest, manifest bytes)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed.hex()}).encode()
    config_type = (
        "application/vnd.oci.image.config.v1+json"
        if "oci" in media_type
        else "application/vnd.docker.container.image.v1+json"
    )
    layer_type = (
        "application/vnd.oci.image.layer.v1.tar+gzip"
        if "oci" in media_type
        else "application/vnd.docker.image.rootfs.diff.tar.gzip"
    )
    descriptors = []
    for i in range(layers):
        data = seed + b"layer" + bytes([i]) * 100
        descriptors.append(
            {
                "mediaType": layer_type,
                "digest": await push_blob(client, name, data),
                "size": len(data),
            }
        )
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": config_type,
            "digest": await push_blob(client, name, config),
            "size": len(config),
        },
        "layers": descriptors,
        **(extra or {}),
    }
    body = json.dumps(manifest).encode()
    digest = sha256(body)
    r = await client.put(
        f"/v2/{name}/manifests/{tag or digest}", content=body, headers={"Content-Type": media_type}
    )
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == digest
    return digest, body


def error_code(response: httpx.Response) -> str:
    return str(response.json()["errors"][0]["code"])
