"""berth gc on the S3 driver against a real SeaweedFS server: what is kept and removed,
randomised concurrent pushes during GC, and upload purging with multipart uploads.

S3 modification times have one-second resolution and cannot be backdated, so these tests wait
a little over two seconds (plus the replicas' reservation reuse window, which GC allows for)
instead of ageing files, and run GC with a zero grace period. The replicas reuse reservations
(cache.reservation_reuse_seconds), so the randomised rounds prove that a GC knowing the window
never collects what a reused reservation relies on.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from berth.app import create_app
from berth.config import Settings
from berth.gc.purge import purge_uploads
from berth.gc.run import GCOptions, collect_garbage
from berth.gc.verify import find_problems
from berth.registry.digest import Digest
from berth.storage import paths
from berth.storage.driver import PathNotFound, StorageDriver

from .gc_fixtures import manifest_blobs, push_image, push_index, push_referrer
from .test_gc_concurrent import _push

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import s3_servers

REUSE = 0.8  # the replicas' reservation reuse window, told to every GC run here
QUIET = 0.5  # the replicas' cache.gc_lease_staleness_seconds, likewise
# past the cut-off (grace 0 s + reuse window + 1 s slack) at one-second resolution
AGE_WAIT = 2.2 + REUSE


@pytest.fixture
def seaweedfs(seaweedfs_server: s3_servers.S3Server) -> s3_servers.S3Server:
    return seaweedfs_server  # one server per worker (tests/conftest.py)


@pytest.fixture
async def s3(
    seaweedfs: s3_servers.S3Server, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Settings, list[httpx.AsyncClient], StorageDriver]]:
    """Settings with a fresh root prefix, two replicas (apps) and a driver for GC."""
    from berth.storage.s3 import S3Driver

    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    s3_conf: dict[str, Any] = seaweedfs.settings(
        root_directory=f"gc-{uuid.uuid4().hex[:10]}", part_size=5 * 1024 * 1024
    )
    settings = Settings(
        storage={"driver": "s3", "s3": s3_conf, "redirect": False},
        observability={"access_log": False},
        cache={"reservation_reuse_seconds": REUSE, "gc_lease_staleness_seconds": QUIET},
    )
    drivers = [S3Driver(settings.storage.s3) for _ in range(3)]
    for d in drivers:
        await d.start()
    clients = [
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(settings, driver=d)),
            base_url="http://r",
        )
        for d in drivers[:2]
    ]
    yield settings, clients, drivers[2]
    for c in clients:
        await c.aclose()
    for d in drivers:
        await d.close()


async def _exists(driver: StorageDriver, digest: str) -> bool:
    try:
        await driver.stat(paths.blob_data(Digest.parse(digest)))
    except PathNotFound:
        return False
    return True


async def test_s3_keeps_reachable_and_removes_unreachable(s3: Any) -> None:
    _settings, (c, _), driver = s3
    tagged = await push_image(c, "app", "v1", seed=b"tagged")
    untagged = await push_image(c, "app", None, seed=b"untagged")
    ch1 = await push_image(c, "app", None, seed=b"c1")
    ch2 = await push_image(c, "app", None, seed=b"c2")
    index = await push_index(c, "app", "multi", [ch1, ch2])
    sig = await push_referrer(c, "app", tagged, b"sig")
    await asyncio.sleep(AGE_WAIT)
    report = await collect_garbage(
        driver,
        GCOptions(
            grace_period=0,
            reservation_reuse=REUSE,
            lease_staleness=QUIET,
            delete_untagged=True,
            lease_settle=0.1,
        ),
    )
    assert report.ok, report.errors
    for digest, body in (tagged, ch1, ch2, index, sig):
        assert await _exists(driver, digest)
        for blob in manifest_blobs(body):
            assert await _exists(driver, blob)
        r = await c.get(f"/v2/app/manifests/{digest}")
        assert r.status_code == 200
    assert not await _exists(driver, untagged[0])
    for blob in manifest_blobs(untagged[1]):
        assert not await _exists(driver, blob)
    assert report.blobs_deleted == 1 + len(manifest_blobs(untagged[1]))
    assert await find_problems(driver) == []


async def test_s3_pushes_during_gc_randomised_rounds(s3: Any) -> None:
    _settings, replicas, driver = s3
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    pool = [f"s3 shared layer {i} ".encode() * 30 for i in range(8)]
    # One over SMALL_BLOB: written straight to its key, completed after the GC handshake.
    pool += [b"s3 large shared layer " * 60_000]
    deleted = retries = in_use = 0
    for rnd in range(3):
        for i in range(2):
            d, _b, _ = await _push(replicas[0], "garbage", f"g{rnd}-{i}", rng.sample(pool, 3))
            assert (await replicas[0].delete(f"/v2/garbage/manifests/{d}")).status_code == 202
        await asyncio.sleep(AGE_WAIT)

        async def run_gc() -> None:
            nonlocal deleted, in_use

            async def widen(phase: str) -> None:
                await asyncio.sleep(rng.uniform(0, 0.3))

            report = await collect_garbage(
                driver,
                GCOptions(
                    grace_period=0,
                    reservation_reuse=REUSE,
                    lease_staleness=QUIET,
                    lease_settle=0.1,
                    delete_untagged=rng.random() < 0.5,
                ),
                phase_hook=widen,
            )
            assert report.ok, report.errors
            deleted += report.blobs_deleted
            in_use += report.skipped_in_use

        async def pusher(k: int, rnd: int = rnd) -> tuple[str, str, bytes, int]:
            await asyncio.sleep(rng.uniform(0, 0.6))
            layers = [*rng.sample(pool, 2), f"s3 new {rnd} {k}".encode() * 20]
            repo = rng.choice(["garbage", "app"])
            d, body, tries = await _push(rng.choice(replicas), repo, f"r{rnd}-{k}", layers)
            return repo, d, body, tries

        results = await asyncio.gather(run_gc(), *(pusher(k) for k in range(4)))
        for repo, d, _body, tries in results[1:]:  # type: ignore[misc]
            retries += tries
            assert (await replicas[1].get(f"/v2/{repo}/manifests/{d}")).status_code == 200
        found = await find_problems(driver)
        assert found == [], f"round {rnd} (seed {seed}): {found}"
        for repo, d, *_ in results[1:]:  # type: ignore[misc]
            await replicas[0].delete(f"/v2/{repo}/manifests/{d}")
    assert deleted > 0
    print(f"s3 seed={seed} deleted={deleted} retries={retries} kept by handshake={in_use}")


async def test_s3_purge_aborts_multipart_uploads(s3: Any, seaweedfs: Any) -> None:
    settings, (c, _), driver = s3
    r = await c.post("/v2/app/blobs/uploads/")
    loc = r.headers["Location"]
    six_mib = b"x" * (6 * 1024 * 1024)  # more than one part: a multipart upload is open
    r = await c.patch(loc, content=six_mib, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 202, r.text
    raw = seaweedfs.boto3_client()
    prefix = settings.storage.s3.root_directory

    def open_uploads() -> list[Any]:
        page = raw.list_multipart_uploads(Bucket=settings.storage.s3.bucket, Prefix=prefix)
        return page.get("Uploads", [])

    assert open_uploads()
    # Not stale yet: nothing happens.
    stats = await purge_uploads(driver, 3600, time.time())
    assert stats.uploads_purged == 0 and open_uploads()
    # "A week later".
    stats = await purge_uploads(driver, 7 * 86400, time.time() + 8 * 86400)
    assert stats.uploads_purged == 1, stats.errors
    assert open_uploads() == []
    r = await c.get(loc)
    assert r.status_code == 404
    assert json.loads(r.content)["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
