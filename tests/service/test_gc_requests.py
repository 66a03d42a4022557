"""The batched sweep (docs/gc.md, "Batches"): requests per removed blob on S3, counted with a
driver wrapper (never timed), and the concurrent-push rounds of test_gc_concurrent.py and
test_gc_s3.py run again with a driver that deletes in batches (``delete_many``).

``without``: the same run through the interface's default ``delete_many`` (one request per key),
what GC sends to a store without batch deletes.
"""

from __future__ import annotations

import asyncio
import random
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from berth.gc.run import GCOptions, collect_garbage
from berth.gc.verify import find_problems
from berth.storage.driver import StorageDriver

from . import test_gc_concurrent
from .gc_fixtures import CountingDriver, populate, s3_delete_many
from .test_gc_concurrent import (  # noqa: F401 (fixtures)
    JitterDriver,
    replica_apps,
    replicas,
    test_pushes_during_gc_randomised_rounds,
)
from .test_gc_s3 import (  # noqa: F401
    AGE_WAIT,
    s3,
    seaweedfs,
    test_s3_pushes_during_gc_randomised_rounds,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import s3_servers

# These tests age storage: see the fixture.
pytestmark = pytest.mark.usefixtures("no_reservation_reuse")

IMAGES, LAYERS = 24, 9  # 12 garbage images: 132 garbage blobs among 264


@pytest.fixture
async def s3_driver(
    seaweedfs_server: s3_servers.S3Server, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Any]:
    from berth.config import S3Settings
    from berth.storage.s3 import S3Driver

    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    driver = S3Driver(
        S3Settings(**seaweedfs_server.settings(root_directory=f"gcr-{uuid.uuid4().hex[:10]}"))
    )
    await driver.start()
    yield driver
    await driver.close()


async def _counted_gc(driver: CountingDriver) -> tuple[Any, int]:
    """One run; returns the report and the requests from the plan to the end (the sweep)."""
    at_plan = 0

    async def hook(phase: str) -> None:
        nonlocal at_plan
        if phase == "planned":
            at_plan = driver.requests

    report = await collect_garbage(
        driver,
        GCOptions(grace_period=0, lease_settle=0.1, purge_uploads=False),
        phase_hook=hook,
    )
    assert report.ok, report.errors
    return report, driver.requests - at_plan


@pytest.mark.parametrize("batched", [True, False], ids=["delete_many", "without"])
async def test_s3_requests_per_removed_blob(s3_driver: Any, batched: bool) -> None:
    garbage = await populate(s3_driver, IMAGES, LAYERS)
    await asyncio.sleep(AGE_WAIT)
    counting = CountingDriver(s3_driver, s3_delete_many(s3_driver) if batched else None)
    report, sweep = await _counted_gc(counting)
    assert report.blobs_deleted == garbage
    per_blob = sweep / report.blobs_deleted
    print(
        f"{'delete_many' if batched else 'without'}: sweep {sweep} requests for "
        f"{report.blobs_deleted} blobs ({per_blob:.2f}/blob); whole run {counting.requests}; "
        f"{dict(counting.ops)}"
    )
    if batched:
        assert per_blob <= 1.5
    else:
        # Tombstone PUT and three single deletes (link, data, tombstone) per blob, and the
        # shared re-check listings (the sweep before batching: about 6 per blob).
        assert per_blob <= 4.5
    assert await find_problems(s3_driver) == []
    # Kept images intact, nothing left for a second run (no empty directories either).
    counting.reset()
    again, sweep = await _counted_gc(counting)
    assert again.objects_removed == 0 and again.blobs_total == (
        IMAGES - garbage // (LAYERS + 2)
    ) * (LAYERS + 2)
    assert sweep <= 2  # the lease's release


class JitterBatchDriver(JitterDriver):
    """JitterDriver with ``delete_many``: the batched path on the filesystem, with latency."""

    async def delete_many(self, keys: list[str], *, prune: bool = True) -> None:
        await self._pause()
        for key in keys:
            await self.inner.delete(key, prune=prune)


@pytest.mark.parametrize("grace", [0.0, 3600.0])
async def test_pushes_during_batched_gc_randomised_rounds(
    replicas: list[httpx.AsyncClient],  # noqa: F811
    replica_apps: list[FastAPI],  # noqa: F811
    storage_root: Path,
    grace: float,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(test_gc_concurrent, "JitterDriver", JitterBatchDriver)
    await test_pushes_during_gc_randomised_rounds(replicas, replica_apps, storage_root, grace)


async def test_s3_pushes_during_batched_gc_randomised_rounds(s3: Any) -> None:  # noqa: F811
    settings, replicas_, driver = s3
    batched: StorageDriver = CountingDriver(driver, s3_delete_many(driver))
    random.seed()
    await test_s3_pushes_during_gc_randomised_rounds((settings, replicas_, batched))
