"""The journal: events in storage, written before the response that caused them is sent.

Concurrent requests share one storage write (group commit): while a batch is being written,
the events recorded meanwhile wait and go together in the next one. A batch is one object
``_berth/events/journal/<key>``, created conditionally (never overwritten), JSON lines of event
records. Keys sort by the time their write began (``<unix ns>-<writer>-<seq>``), so a
request's event sorts after that of any request answered before it started (on any replica
whose clock agrees). Batches are immutable; they are deleted once every endpoint is done with
them (delivery.py).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable

from ..storage import paths
from ..storage.driver import PathNotFound, StorageDriver
from .model import Event


def encode(events: list[Event]) -> bytes:
    return b"".join(json.dumps(e.record(), separators=(",", ":")).encode() + b"\n" for e in events)


def decode(data: bytes) -> list[Event]:
    """The batch's events; ValueError for anything that is not a batch this module wrote."""
    try:
        return [Event.from_record(json.loads(line)) for line in data.splitlines() if line.strip()]
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"not a journal batch: {type(exc).__name__}: {exc}"[:300]) from None


class JournalWriter:
    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver
        self._writer_id = uuid.uuid4().hex[:12]
        self._seq = 0
        self._last_ns = 0
        self._waiting: list[tuple[list[Event], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []

    def on_written(self, listener: Callable[[], None]) -> None:
        """Called after each batch is stored (wakes this process's delivery loops)."""
        self._listeners.append(listener)

    async def append(self, events: list[Event]) -> None:
        """Return once ``events`` are stored (raises the storage error if they are not)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((events, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="berth-events-journal")
        # Shielded: a client that disconnects does not cancel the write others wait for.
        await asyncio.shield(future)

    def _next_key(self) -> str:
        now = max(time.time_ns(), self._last_ns + 1)  # strictly increasing in this process
        self._last_ns = now
        self._seq += 1
        return f"{now:020d}-{self._writer_id}-{self._seq:08d}"

    async def _flush(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting, []
            events = [e for batch, _ in group for e in batch]
            try:
                await self.driver.create(paths.event_batch(self._next_key()), encode(events))
            except Exception as exc:
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _, future in group:
                if not future.done():
                    future.set_result(None)
            for listener in self._listeners:
                listener()


async def batch_keys(driver: StorageDriver) -> list[str]:
    """Every batch in the journal, oldest first."""
    try:
        return sorted(await driver.list(paths.EVENT_JOURNAL))
    except PathNotFound:
        return []


async def read_batch(driver: StorageDriver, key: str) -> list[Event] | None:
    """A batch's events; None when it is gone (delivered everywhere and deleted)."""
    try:
        return decode(await driver.get(paths.event_batch(key)))
    except PathNotFound:
        return None


__all__ = ["JournalWriter", "batch_keys", "decode", "encode", "read_batch"]
