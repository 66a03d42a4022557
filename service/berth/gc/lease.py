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
        self.expires = 0.0  # of our last stamp (epoch seconds)

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

    async def keep(self, min_left: float) -> None:
        """Stamp again if our record expires within ``min_left`` seconds (a long run)."""
        if self.expires - time.time() < min_left:
            await self.stamp()

    async def linger(self, seconds: float) -> None:
        """Instead of releasing: leave the record to expire ``seconds`` from now (a failed GC
        run whose deletes may still be landing; gc_quiet.py trusts no writer meanwhile)."""
        await self.stamp(ttl=seconds)
        self.held = False

    async def stamp(self, ttl: float | None = None) -> None:
        ttl = self.ttl if ttl is None else ttl
        expires = time.time() + ttl
        record = {"holder": self.holder, "expires": expires, "ttl": ttl}
        await self.driver.put(self.key, json.dumps(record).encode())
        self.expires = expires
