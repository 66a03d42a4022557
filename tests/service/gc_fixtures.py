"""Helpers shared by the GC tests: an in-process registry, pushes, ageing files, GC runs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from berth.gc.report import Report
from berth.gc.run import GCOptions, collect_garbage
from berth.gc.verify import find_problems
from berth.registry.digest import Digest
from berth.storage import paths
from berth.storage.driver import FileWriter, ObjectInfo, StorageDriver
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


# -- counting requests ---------------------------------------------------------------------------

S3_PAGE = 1000  # keys per ListObjectsV2 page and per DeleteObjects request


def _pages(n: int) -> int:
    return max(1, math.ceil(n / S3_PAGE))


class CountingDriver(StorageDriver):
    """Passes every call on and counts the requests it costs on S3 (the S3 driver's mapping:
    one request per get/put/create/stat/delete, one ListObjectsV2 per 1,000 keys listed,
    ``delete_tree`` = a listing + a DeleteObjects, ``delete_many`` = one DeleteObjects per
    1,000 keys and directory entries). Without a ``delete_many`` given, the interface's default
    runs: one counted ``delete`` per key (a store without batch deletes)."""

    def __init__(
        self,
        inner: StorageDriver,
        delete_many: Callable[..., Awaitable[None]] | None = None,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.ops: Counter[str] = Counter()
        if delete_many is not None:

            async def counted(keys: list[str], *, prune: bool = True) -> None:
                # The keys, then the emptied directory entries (one per parent) after them.
                parents = {k.rsplit("/", 1)[0] for k in keys} if prune else set()
                self.ops["delete_many"] += _pages(len(keys) + len(parents))
                await delete_many(keys, prune=prune)

            self.delete_many = counted

    @property
    def requests(self) -> int:
        return sum(self.ops.values())

    def reset(self) -> None:
        self.ops.clear()

    async def get(self, key: str) -> bytes:
        self.ops["get"] += 1
        return await self.inner.get(key)

    async def put(self, key: str, data: bytes) -> None:
        self.ops["put"] += 1
        await self.inner.put(key, data)

    async def create(self, key: str, data: bytes) -> None:
        self.ops["create"] += 1
        await self.inner.create(key, data)

    async def stat(self, key: str) -> ObjectInfo:
        self.ops["stat"] += 1
        return await self.inner.stat(key)

    async def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        self.ops["read"] += 1
        async for chunk in self.inner.read(key, offset, length):
            yield chunk

    async def list(self, prefix: str) -> list[str]:
        try:
            names = await self.inner.list(prefix)
        except BaseException:
            self.ops["list"] += 1
            raise
        self.ops["list"] += _pages(len(names))
        return names

    async def walk(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        n = 0
        try:
            async for info in self.inner.walk(prefix):
                n += 1
                yield info
        finally:
            self.ops["walk"] += _pages(n)

    async def delete(self, key: str, *, prune: bool = True) -> None:
        self.ops["delete"] += 1
        await self.inner.delete(key, prune=prune)

    async def delete_tree(self, prefix: str) -> None:
        # One ListObjectsV2 + one DeleteObjects (the S3 driver sends one even for an empty tree
        # when it prunes directory entries): exact for trees under 1,000 keys, as GC's are.
        self.ops["delete_tree"] += 2
        await self.inner.delete_tree(prefix)

    async def move(self, src: str, dst: str) -> None:
        self.ops["move"] += 2
        await self.inner.move(src, dst)

    async def writer(self, key: str, append: bool = False) -> FileWriter:
        self.ops["writer"] += 1
        return await self.inner.writer(key, append)

    async def abort_stale_uploads(self, older_than: float) -> int:
        self.ops["abort_stale_uploads"] += 1
        return await self.inner.abort_stale_uploads(older_than)

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()


class RecordingDriver(CountingDriver):
    """Counts like CountingDriver and records the keys written and read and the prefixes listed."""

    def __init__(self, inner: StorageDriver) -> None:
        super().__init__(inner)
        self.written: list[str] = []
        self.listed: list[str] = []
        self.got: list[str] = []

    def reset(self) -> None:
        super().reset()
        self.written.clear()
        self.listed.clear()
        self.got.clear()

    async def put(self, key: str, data: bytes) -> None:
        self.written.append(key)
        await super().put(key, data)

    async def get(self, key: str) -> bytes:
        self.got.append(key)
        return await super().get(key)

    async def list(self, prefix: str) -> list[str]:
        self.listed.append(prefix)
        return await super().list(prefix)


def s3_delete_many(driver: Any) -> Callable[..., Awaitable[None]]:
    """The S3 driver's ``delete_many`` (ordered DeleteObjects of up to 1,000 keys, then the
    directory entries that became empty, which SeaweedFS lists); for a driver from before the
    operation, the same through ``delete_full``. ``CountingDriver`` without it counts what a
    driver without batch deletes sends (the interface's default: one delete per key)."""
    if "delete_many" in type(driver).__dict__:
        return driver.delete_many  # type: ignore[no-any-return]

    async def delete_many(keys: list[str], *, prune: bool = True) -> None:
        full = [driver.full_key(k) for k in keys]
        markers: list[str] = []
        if prune and driver.settings.prune_directories:
            parents = {f.rsplit("/", 1)[0] for f in full if "/" in f}
            markers = [f"{p}/" for p in sorted(parents, key=lambda p: -p.count("/"))]
        await driver.delete_full(full + markers)

    return delete_many


# -- a registry written straight through the driver (benchmarks, request counts) ------------------


def _d(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


async def populate(
    driver: StorageDriver, images: int, layers: int = 19, per_repo: int = 50, parallel: int = 64
) -> int:
    """Images of ``layers`` layers + config + manifest (blobs, ``_layers`` links) in
    repositories of ``per_repo`` images; even images tagged (revision, tag index and current
    links), odd ones "deleted" (no revision link: every blob of theirs is garbage, even with
    ``delete_untagged`` off). Returns the number of garbage blobs."""
    sem = asyncio.Semaphore(parallel)

    async def put(key: str, data: bytes) -> None:
        async with sem:
            await driver.put(key, data)

    jobs = []
    garbage = 0
    for i in range(images):
        repo = f"bench/r{i // per_repo}"
        blobs = [f"layer {i} {j} ".encode() * 8 for j in range(layers)]
        config = json.dumps({"image": i}).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": str(_d(config)),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": str(_d(x)),
                        "size": len(x),
                    }
                    for x in blobs
                ],
            }
        ).encode()
        for x in [*blobs, config, manifest]:
            jobs.append(put(paths.blob_data(_d(x)), x))
        for x in [*blobs, config]:
            jobs.append(put(paths.layer_link(repo, _d(x)), str(_d(x)).encode()))
        if i % 2 == 0:
            md = _d(manifest)
            jobs.append(put(paths.revision_link(repo, md), str(md).encode()))
            jobs.append(put(paths.tag_index_link(repo, f"t{i}", md), str(md).encode()))
            jobs.append(put(paths.tag_current_link(repo, f"t{i}"), str(md).encode()))
        else:
            garbage += layers + 2
    await asyncio.gather(*jobs)
    return garbage


__all__ = ["push_blob", "push_image", "sha256"]
