"""When cached blobs were last used, for eviction (``berth gc``): each use is noted in process,
and a background task rewrites the blob's access object in storage at most once per blob per
``proxy.access_record_seconds`` (the object's modification time is the record)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from ..registry.digest import Digest
from ..storage import paths
from ..storage.driver import StorageDriver

log = logging.getLogger("berth.proxy")

FLUSH_SECONDS = 5.0  # how soon a noted use reaches storage
MAX_PENDING = 100_000  # bounded: uses beyond it wait for the next interval


class AccessRecorder:
    def __init__(self, driver: StorageDriver, interval: float) -> None:
        self.driver = driver
        self.interval = interval
        self._recorded: dict[Digest, float] = {}  # digest -> monotonic time last recorded
        self._pending: set[Digest] = set()
        self._task: asyncio.Task[None] | None = None

    def note(self, digest: Digest) -> None:
        """A use, on the request path: a dict lookup, no I/O."""
        now = time.monotonic()
        last = self._recorded.get(digest)
        if last is not None and now - last < self.interval:
            return
        if len(self._pending) >= MAX_PENDING:
            return
        self._recorded[digest] = now
        self._pending.add(digest)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_SECONDS)
        await self.flush()

    async def flush(self) -> None:
        """Write every pending record now."""
        pending, self._pending = list(self._pending), set()
        if len(self._recorded) > MAX_PENDING:  # forget old entries: they are re-recorded
            cutoff = time.monotonic() - self.interval
            self._recorded = {d: t for d, t in self._recorded.items() if t >= cutoff}
        results = await asyncio.gather(
            *(self.driver.put(paths.blob_access(d), b"") for d in pending),
            return_exceptions=True,
        )
        failed = [d for d, r in zip(pending, results, strict=True) if isinstance(r, Exception)]
        for digest in failed:  # recorded next time it is used
            self._recorded.pop(digest, None)
        if failed:
            log.warning("proxy: %d access records could not be written", len(failed))

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()


__all__ = ["AccessRecorder"]
