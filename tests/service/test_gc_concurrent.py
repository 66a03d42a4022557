"""GC while the registry serves pushes: the handshake, stale size caches, randomised rounds."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from berth.app import create_app
from berth.gc.inventory import take_inventory
from berth.gc.mark import Marker
from berth.gc.run import GCOptions, collect_garbage
from berth.gc.sweep import Sweeper, plan
from berth.registry.blobs import BlobStore
from berth.registry.digest import Digest
from berth.storage import paths
from berth.storage.driver import FileWriter, ObjectInfo, StorageDriver
from berth.storage.filesystem import FilesystemDriver

from .conftest import error_code, make_settings
from .gc_fixtures import (
    OCI_MANIFEST,
    age,
    blob_path,
    gc,
    layer_link,
    manifest_blobs,
    problems,
    push_image,
)

# These tests age storage: see the fixture.
pytestmark = pytest.mark.usefixtures("no_reservation_reuse")


class JitterDriver(StorageDriver):
    """The filesystem driver with object-store-like latency: a random pause before each call,
    which widens every window between a check and the write that depends on it."""

    name = "jitter"

    def __init__(self, root: Path, max_delay: float = 0.004) -> None:
        self.inner = FilesystemDriver(root)
        self.max_delay = max_delay

    async def _pause(self) -> None:
        await asyncio.sleep(random.uniform(0, self.max_delay))

    async def get(self, key: str) -> bytes:
        await self._pause()
        return await self.inner.get(key)

    async def put(self, key: str, data: bytes) -> None:
        await self._pause()
        await self.inner.put(key, data)

    async def stat(self, key: str) -> ObjectInfo:
        await self._pause()
        return await self.inner.stat(key)

    async def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        await self._pause()
        async for chunk in self.inner.read(key, offset, length):
            yield chunk

    async def list(self, prefix: str) -> list[str]:
        await self._pause()
        return await self.inner.list(prefix)

    async def walk(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        await self._pause()
        async for info in self.inner.walk(prefix):
            yield info

    async def delete(self, key: str, *, prune: bool = True) -> None:
        await self._pause()
        await self.inner.delete(key, prune=prune)

    async def delete_tree(self, prefix: str) -> None:
        await self._pause()
        await self.inner.delete_tree(prefix)

    async def create(self, key: str, data: bytes) -> None:
        await self._pause()
        await self.inner.create(key, data)

    async def move(self, src: str, dst: str) -> None:
        await self._pause()
        await self.inner.move(src, dst)

    async def writer(self, key: str, append: bool = False) -> FileWriter:
        await self._pause()
        return await self.inner.writer(key, append)


# The replicas' cache.gc_lease_staleness_seconds, told to every GC run racing them here: their
# reservations skip the tombstone listing after a quiet look at the GC lease.
QUIET = 0.2


@pytest.fixture
def replica_apps(storage_root: Path) -> list[FastAPI]:
    """Two registry instances (own caches) over one directory: two replicas."""
    base = make_settings(storage_root)
    cache = base.cache.model_copy(update={"gc_lease_staleness_seconds": QUIET})
    settings = base.model_copy(update={"cache": cache})
    return [create_app(settings, driver=JitterDriver(storage_root)) for _ in range(2)]


@pytest.fixture
async def replicas(replica_apps: list[FastAPI]) -> AsyncIterator[list[httpx.AsyncClient]]:
    clients = [
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r")
        for app in replica_apps
    ]
    yield clients
    for c in clients:
        await c.aclose()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def test_stale_size_cache_cannot_produce_a_dangling_manifest(
    client: httpx.AsyncClient, storage_root: Path
) -> None:
    c = client
    digest, body = await push_image(c, "app", "v1", seed=b"cached")
    blobs = manifest_blobs(body)
    for blob in blobs:  # warm this replica's size cache
        assert (await c.head(f"/v2/app/blobs/{blob}")).status_code == 200
    assert (await c.delete(f"/v2/app/manifests/{digest}")).status_code == 202
    age(storage_root)
    report = await gc(storage_root, grace_period=0)
    assert report.blobs_deleted == len(blobs) + 1
    # The link went with the blob, so HEAD answers 404 although the size is still cached.
    for blob in blobs:
        assert (await c.head(f"/v2/app/blobs/{blob}")).status_code == 404
    # A client that skipped the uploads (it saw the blobs earlier) is refused, not accepted.
    r = await c.put("/v2/app/manifests/v1", content=body, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 400 and error_code(r) == "MANIFEST_BLOB_UNKNOWN", r.text
    # A mount of a collected blob falls back to an upload session.
    r = await c.post("/v2/other/blobs/uploads/", params={"mount": blobs[0], "from": "app"})
    assert r.status_code == 202
    r = await c.post("/v2/other/blobs/uploads/", params={"mount": blobs[0]})
    assert r.status_code == 202
    assert await problems(storage_root) == []
    # Pushing it again (blobs then manifest) works.
    assert await push_image(c, "app", "v1", seed=b"cached") == (digest, body)
    assert await problems(storage_root) == []


async def test_writer_between_mark_and_sweep_keeps_the_blob(
    replicas: list[httpx.AsyncClient], storage_root: Path
) -> None:
    a, b = replicas
    digest, body = await push_image(a, "app", "v1", seed=b"between")
    assert (await a.delete(f"/v2/app/manifests/{digest}")).status_code == 202
    age(storage_root)
    driver = FilesystemDriver(storage_root)
    now = time.time()
    inv = await take_inventory(driver)
    mark = await Marker(driver, inv, delete_untagged=False, cutoff=now - 1).run()
    units = plan(inv, mark, now - 1, now)
    doomed = {str(u.digest) for u in units if u.delete_data}
    assert set(manifest_blobs(body)) <= doomed
    # Between mark and sweep, replica b (which never saw these blobs) re-links them: the blobs
    # are uploaded again by a client that HEADs first, then the manifest is PUT.
    for blob in manifest_blobs(body):
        r = await b.post("/v2/app2/blobs/uploads/", params={"mount": blob, "from": "app"})
        assert r.status_code in (201, 202)
    r = await b.put("/v2/app/manifests/v1", content=body, headers={"Content-Type": OCI_MANIFEST})
    # The layer links in "app" are old but still there: the manifest PUT is accepted ...
    assert r.status_code == 201, r.text
    stats = await Sweeper(driver, "t1", now - 1).run(units)
    # ... and the sweep drops every unit a writer touched after the plan.
    assert stats.skipped_in_use >= len(manifest_blobs(body))
    for blob in manifest_blobs(body):
        assert blob_path(storage_root, blob).exists()
    assert await problems(storage_root) == []


async def test_reserve_waits_for_a_live_tombstone_and_ignores_a_stale_one(
    storage_root: Path,
) -> None:
    driver = FilesystemDriver(storage_root)
    store = BlobStore(driver, 100)
    data = b"blob under collection"
    d = Digest.parse(_digest(data))
    await driver.put(paths.blob_data(d), data)
    tomb = paths.blob_tombstone(d, "live")
    await driver.put(tomb, b"")
    task = asyncio.create_task(store.reserve(d))
    await asyncio.sleep(0.3)
    assert not task.done()  # waits while the GC works on this digest
    await driver.delete(tomb)
    assert await asyncio.wait_for(task, 5) == len(data)
    # A tombstone much older than the writer's touch belongs to a dead GC: ignored.
    await driver.put(paths.blob_tombstone(d, "dead"), b"")
    old = time.time() - 600
    os.utime(storage_root / paths.blob_tombstone(d, "dead"), (old, old))
    assert await asyncio.wait_for(store.reserve(d), 2) == len(data)


async def _push(
    c: httpx.AsyncClient, repo: str, tag: str, layers: list[bytes]
) -> tuple[str, bytes, int]:
    """Push like docker does: HEAD each blob, upload the missing ones, PUT the manifest;
    on MANIFEST_BLOB_UNKNOWN start again (the blobs it skipped were collected)."""
    config = json.dumps({"tag": tag, "n": len(layers)}).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": _digest(config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": _digest(x),
                "size": len(x),
            }
            for x in layers
        ],
    }
    body = json.dumps(manifest).encode()
    for attempt in range(5):
        for data in [config, *layers]:
            d = _digest(data)
            if (await c.head(f"/v2/{repo}/blobs/{d}")).status_code == 200:
                continue
            await asyncio.sleep(random.uniform(0, 0.01))
            r = await c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": d}, content=data)
            assert r.status_code == 201, r.text
        await asyncio.sleep(random.uniform(0, 0.02))
        r = await c.put(
            f"/v2/{repo}/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST}
        )
        if r.status_code == 201:
            return _digest(body), body, attempt
        assert r.status_code == 400 and error_code(r) == "MANIFEST_BLOB_UNKNOWN", r.text
    raise AssertionError("push did not succeed in 5 attempts")


@pytest.mark.parametrize("grace", [0.0, 3600.0])
async def test_pushes_during_gc_randomised_rounds(
    replicas: list[httpx.AsyncClient],
    replica_apps: list[FastAPI],
    storage_root: Path,
    grace: float,
) -> None:
    """Rounds of: old garbage (aged past the grace period) + GC + pushers that reuse garbage
    blobs and add new ones, all started with random delays against two replicas. After every
    round no manifest points at a missing or unlinked blob, and every pushed tag pulls."""
    rng = random.Random(int(os.environ.get("BERTH_GC_SEED", "0")) or None)
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    random.seed(seed)
    driver = JitterDriver(storage_root)
    pool = [f"shared layer {i} ".encode() * 50 for i in range(12)]
    # Two over SMALL_BLOB: those go straight to blobs/…/data through a writer invisible until
    # committed (uploads._complete_whole), racing the GC that removes the same digest.
    pool += [f"large shared layer {i} ".encode() * 70_000 for i in range(2)]
    deleted_total = retries = in_use = 0
    gc_times: list[float] = []
    rounds = 8
    for rnd in range(rounds):
        # Garbage: images over pool blobs, pushed then deleted, then aged.
        for i in range(3):
            d, _b, _ = await _push(replicas[0], "garbage", f"g{rnd}-{i}", rng.sample(pool, 3))
            assert (await replicas[0].delete(f"/v2/garbage/manifests/{d}")).status_code == 202
        age(storage_root, grace + 600)

        async def run_gc() -> None:
            await asyncio.sleep(rng.uniform(0, 0.03))

            async def widen(phase: str) -> None:  # random gaps between list, mark and sweep
                await asyncio.sleep(rng.uniform(0, 0.1))

            report = await collect_garbage(
                driver,
                GCOptions(
                    grace_period=grace,
                    lease_settle=0.0,
                    lease_staleness=QUIET,
                    delete_untagged=rng.random() < 0.5,
                ),
                phase_hook=widen,
            )
            assert report.ok, report.errors
            nonlocal deleted_total, in_use
            deleted_total += report.blobs_deleted
            in_use += report.skipped_in_use
            gc_times.append(report.elapsed_seconds)

        async def pusher(k: int, rnd: int = rnd) -> tuple[str, str, bytes, int, bool]:
            await asyncio.sleep(rng.uniform(0, 0.25))  # spread over the GC's phases
            reuse = rng.random() < 0.7
            layers = (rng.sample(pool, 2) if reuse else []) + [f"new {rnd} {k}".encode() * 40]
            repo = rng.choice(["garbage", "garbage", "app1"])
            d, body, tries = await _push(rng.choice(replicas), repo, f"r{rnd}-{k}", layers)
            return repo, d, body, tries, reuse

        results = await asyncio.gather(run_gc(), *(pusher(k) for k in range(5)))
        for repo, d, body, tries, reuse in results[1:]:  # type: ignore[misc]
            retries += tries
            if grace > 0 and not reuse:
                assert tries == 0, "a push of new blobs failed with a grace period"
            r = await replicas[rnd % 2].get(f"/v2/{repo}/manifests/{d}")
            assert r.status_code == 200
            for blob in manifest_blobs(body):
                assert blob_path(storage_root, blob).exists()
                assert layer_link(storage_root, repo, blob).exists()
        found = await problems(storage_root)
        assert found == [], f"round {rnd} (seed {seed}): {found}"
        # Most of this round's images become garbage for the next round's GC.
        for repo, d, *_ in results[1:]:  # type: ignore[misc]
            if rng.random() < 0.8:
                r = await replicas[0].delete(f"/v2/{repo}/manifests/{d}")
                assert r.status_code in (202, 404)
    assert deleted_total > 0, "GC never collected anything: the test exercised nothing"
    skipped = sum(app.state.registry.blobs.gc_quiet.skipped for app in replica_apps)
    assert skipped > 0, "no reservation trusted a look at the GC lease"
    print(
        f"seed={seed} rounds={rounds} blobs deleted={deleted_total} push retries={retries} "
        f"units kept by the handshake={in_use} gc seconds={gc_times} listings skipped={skipped}"
    )
