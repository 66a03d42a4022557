"""A lease object in storage, so that at most one process runs a maintenance job at a time.

Object stores offer no compare-and-swap that every S3 implementation supports, so the lease is
"write, wait, read back": a holder writes ``{holder, expires}``, waits ``settle`` seconds and
reads the object again; it holds the lease only if its own record is still there. Two processes
can only both believe they hold it if one's read-write gap spans the other's whole settle time,
and nothing depends on the lease for safety: GC runs and upload purges are idempotent and the
per-blob handshake (docs/gc.md) protects writers from any number of concurrent runs. The lease
only keeps replicas from doing the same work at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid

from ..storage import paths
from ..storage.driver import PathNotFound, StorageDriver


class Lease:
    def __init__(
        self,
        driver: StorageDriver,
        name: str,
        ttl: float = 600.0,
        settle: float = 1.0,
        holder: str | None = None,
    ) -> None:
        self.driver = driver
        self.key = paths.lease(name)
        self.ttl = ttl
        self.settle = settle
        self.holder = holder or f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.held = False

    async def current(self) -> dict[str, object] | None:
        try:
            record = json.loads(await self.driver.get(self.key))
        except (PathNotFound, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _live(self, record: dict[str, object] | None) -> bool:
        expires = record.get("expires") if record else None
        return isinstance(expires, int | float) and expires > time.time()

    async def acquire(self) -> bool:
        record = await self.current()
        if record and record.get("holder") != self.holder and self._live(record):
            return False
        await self.stamp()
        await asyncio.sleep(self.settle)
        record = await self.current()
        self.held = bool(record) and record.get("holder") == self.holder  # type: ignore[union-attr]
        return self.held

    async def renew(self) -> bool:
        record = await self.current()
        if not record or record.get("holder") != self.holder:
            self.held = False
            return False
        await self.stamp()
        return True

    async def release(self) -> None:
        record = await self.current()
        if record and record.get("holder") == self.holder:
            await self.driver.delete(self.key)
        self.held = False

    async def storage_time(self) -> float:
        """The store's clock (the lease object's modification time): GC cut-offs use it."""
        return (await self.driver.stat(self.key)).modified

    async def stamp(self) -> None:
        record = {"holder": self.holder, "expires": time.time() + self.ttl, "ttl": self.ttl}
        await self.driver.put(self.key, json.dumps(record).encode())


# -- run markers: what a manifest PUT's fast path reads instead of touching every blob ----------
#
# Every GC run that may delete writes ``_berth/gc-runs/<run>.running`` before it lists storage,
# and once its last delete is done writes ``<run>.done`` and removes ``<run>.running`` (a run
# with nothing to remove just removes its ``.running``). Names are unique per run and a run only
# ever removes markers it listed before writing its own, so the listing of that directory
# changes whenever a run started or finished, and never returns to an earlier state while
# runs come and go (docs/gc.md, "Manifest PUT without touching"). ``BlobStore.gc_runs`` lists it.

GC_RUNS = f"{paths.BERTH_STATE}/gc-runs"
RUNNING_SUFFIX = ".running"
DONE_SUFFIX = ".done"
# A ``.running`` marker older than this belongs to a run that died; the next run removes it.
# A run never sweeps later than this after writing its marker (collect_garbage checks).
RUN_MARKER_TTL_SECONDS = 6 * 3600.0


async def list_gc_runs(driver: StorageDriver) -> frozenset[str]:
    try:
        return frozenset(await driver.list(GC_RUNS))
    except PathNotFound:
        return frozenset()


def any_running(names: frozenset[str]) -> bool:
    return any(n.endswith(RUNNING_SUFFIX) for n in names)


class RunMarker:
    """This run's marker in ``_berth/gc-runs/`` (see above)."""

    def __init__(self, driver: StorageDriver, run_id: str) -> None:
        self.driver = driver
        self.run_id = run_id
        self.before: frozenset[str] = frozenset()
        self.started = 0.0
        self.open = False

    def key(self, name: str) -> str:
        return f"{GC_RUNS}/{name}"

    async def start(self) -> None:
        self.before = await list_gc_runs(self.driver)
        self.started = time.monotonic()
        record = {"run": self.run_id, "started": time.time()}
        await self.driver.put(self.key(self.run_id + RUNNING_SUFFIX), json.dumps(record).encode())
        self.open = True

    def expired(self) -> bool:
        return time.monotonic() - self.started > RUN_MARKER_TTL_SECONDS

    async def finish(self, removed_anything: bool) -> None:
        """After the run's last delete. Also removes the markers it listed before starting:
        older ``.done`` ones (ours replaces them) and ``.running`` ones of dead runs."""
        if not self.open:
            return
        if removed_anything:
            stale = [n for n in self.before if n.endswith(DONE_SUFFIX)]
            for name in self.before:
                if name.endswith(RUNNING_SUFFIX):
                    with contextlib.suppress(PathNotFound):
                        info = await self.driver.stat(self.key(name))
                        if time.time() - info.modified > RUN_MARKER_TTL_SECONDS:
                            stale.append(name)
            await self.driver.put(self.key(self.run_id + DONE_SUFFIX), b"")
            keys = [self.key(self.run_id + RUNNING_SUFFIX)] + [self.key(n) for n in stale]
            await self.driver.delete_many(keys)
        else:
            # Nothing was deleted: no writer can have been affected, so the run may vanish
            # without a trace (older markers stay: removing them needs a ``.done`` of ours).
            await self.driver.delete(self.key(self.run_id + RUNNING_SUFFIX))
        self.open = False
