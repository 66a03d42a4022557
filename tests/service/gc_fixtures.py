"""Helpers shared by the GC tests: an in-process registry, pushes, ageing files, GC runs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx

from berth.gc.report import Report
from berth.gc.run import GCOptions, collect_garbage
from berth.gc.verify import find_problems
from berth.storage.driver import StorageDriver
from berth.storage.filesystem import FilesystemDriver

from .conftest import push_blob, push_image, sha256

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
HOUR = 3600.0


def age(root: Path, seconds: float = 2 * HOUR) -> None:
    """Pretend everything under ``root`` was written ``seconds`` ago."""
    then = time.time() - seconds
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            os.utime(os.path.join(dirpath, f), (then, then))


async def gc(driver: StorageDriver | Path, **kw: Any) -> Report:
    if isinstance(driver, Path):
        driver = FilesystemDriver(driver)
    options = GCOptions(lease_settle=0.0, **kw)
    return await collect_garbage(driver, options)


async def problems(root: Path) -> list[str]:
    return await find_problems(FilesystemDriver(root))


async def push_index(
    client: httpx.AsyncClient, name: str, tag: str | None, children: list[tuple[str, bytes]]
) -> tuple[str, bytes]:
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": d,
                    "size": len(b),
                    "platform": {"os": "linux", "architecture": f"arch{i}"},
                }
                for i, (d, b) in enumerate(children)
            ],
        }
    ).encode()
    digest = sha256(body)
    r = await client.put(
        f"/v2/{name}/manifests/{tag or digest}", content=body, headers={"Content-Type": OCI_INDEX}
    )
    assert r.status_code == 201, r.text
    return digest, body


async def push_referrer(
    client: httpx.AsyncClient, name: str, subject: tuple[str, bytes], seed: bytes
) -> tuple[str, bytes]:
    empty = b"{}"
    await push_blob(client, name, empty)
    payload = b"signature " + seed
    layer = await push_blob(client, name, payload)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.sig",
            "config": {"mediaType": EMPTY, "digest": sha256(empty), "size": 2},
            "layers": [
                {"mediaType": "application/octet-stream", "digest": layer, "size": len(payload)}
            ],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject[0], "size": len(subject[1])},
        }
    ).encode()
    digest = sha256(body)
    r = await client.put(
        f"/v2/{name}/manifests/{digest}", content=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert r.status_code == 201, r.text
    return digest, body


def blob_path(root: Path, digest: str) -> Path:
    hex_ = digest.split(":")[1]
    return root / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"


def layer_link(root: Path, repo: str, digest: str) -> Path:
    return root / f"docker/registry/v2/repositories/{repo}/_layers/sha256/{digest[7:]}/link"


def revision_link(root: Path, repo: str, digest: str) -> Path:
    return (
        root
        / f"docker/registry/v2/repositories/{repo}/_manifests/revisions/sha256/{digest[7:]}/link"
    )


def manifest_blobs(body: bytes) -> list[str]:
    m = json.loads(body)
    out = [m["config"]["digest"]] if "config" in m else []
    return out + [layer["digest"] for layer in m.get("layers", [])]


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if "_berth" in p.parts:
                continue
            out[str(p.relative_to(root))] = (p.stat().st_mtime_ns, p.read_bytes())
    return out


__all__ = ["push_blob", "push_image", "sha256"]
