"""With tracing on, every driver call goes through TracedDriver: it must offer the whole driver
interface, optional capabilities included (a capability hidden by the wrapper silently turns a
feature off, as stale multipart uploads once stopped being aborted with tracing on)."""

from __future__ import annotations

import inspect
import os
import time

from opentelemetry import metrics, trace

from berth.gc.purge import purge_uploads
from berth.storage.driver import StorageDriver
from berth.storage.traced import TracedDriver

from .conftest import PART, Backend


def test_traced_driver_overrides_every_driver_method() -> None:
    public = {
        name
        for name, member in inspect.getmembers(StorageDriver, inspect.isfunction)
        if not name.startswith("_")
    }
    missing = {name for name in public if name not in vars(TracedDriver)}
    assert not missing, f"TracedDriver does not pass on: {sorted(missing)}"


async def test_purge_with_tracing_aborts_stale_multipart_uploads(backend: Backend) -> None:
    async with backend.driver() as inner:
        driver = TracedDriver(
            inner,
            trace.get_tracer("test"),
            metrics.get_meter("test").create_histogram("storage.duration"),
        )
        # A multipart upload no session names any more (its state lost in a crash).
        writer = await inner.writer("docker/registry/v2/stray/data")
        await writer.write(os.urandom(PART))
        await writer.close()
        for info in [i async for i in inner.walk("docker/registry/v2/stray")]:
            await inner.delete(info.key)
        stats = await purge_uploads(driver, older_than=0, now=time.time() + 60)
        assert stats.errors == []
        assert stats.multipart_aborted == (0 if backend.kind == "filesystem" else 1)
