"""One endpoint's delivery loop (a background task in every process; one replica delivers).

Each round, the holder of the endpoint's claim (claims.py) lists the journal and sends the
events of every batch it has not finished, oldest batch first, one event per request, each
only after the one before it was accepted or given up: so events reach the endpoint in the
order they were recorded, per repository (and overall), as long as none is dropped.

* Progress: the set of finished batch keys, saved in storage at most every second while
  batches finish (and when the loop stops), so a replica taking over goes on from there.
  Keys, not a position: a batch whose write began earlier but finished later is still sent.
* A failed attempt is retried after ``backoff_seconds``, doubled each time (at most
  ``max_backoff_seconds``); after ``max_attempts`` the event becomes a dead letter (kept for
  ``dead_letter_retention_seconds``) and the next one is sent.
* At most ``queue_size`` events wait; beyond that the oldest are dropped, counted and logged.
* The endpoint listed first is the journal's janitor: it deletes batches every endpoint has
  finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import time
from collections.abc import Sequence

from ..config import NotificationEndpointSettings, NotificationSettings
from ..observability.metrics import (
    EVENTS_DEAD,
    EVENTS_DELIVERED,
    EVENTS_DROPPED,
    EVENTS_FAILED,
    EVENTS_LATENCY,
    EVENTS_PENDING,
)
from ..storage import paths
from ..storage.driver import PathNotFound, StorageDriver
from .claims import Claim
from .filters import EndpointFilter
from .journal import batch_keys, read_batch
from .model import Event
from .sender import DeliveryFailed, Sender

log = logging.getLogger("berth.events")

HOUSEKEEPING_SECONDS = 5.0
SAVE_SECONDS = 1.0
READS_AT_ONCE = 16


async def load_progress(driver: StorageDriver, endpoint: str) -> set[str]:
    """The journal batches ``endpoint`` has finished."""
    try:
        record = json.loads(await driver.get(paths.event_progress(endpoint)))
    except PathNotFound:
        return set()
    return {k for k in record.get("done", []) if isinstance(k, str)}


async def dead_letter_keys(driver: StorageDriver, endpoint: str) -> list[str]:
    try:
        return await driver.list(paths.dead_letters(endpoint))
    except PathNotFound:
        return []


def _age(timestamp: str) -> float:
    try:
        when = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return 0.0
    return max(0.0, time.time() - when.replace(tzinfo=datetime.UTC).timestamp())


class EndpointDelivery:
    def __init__(
        self,
        driver: StorageDriver,
        endpoint: NotificationEndpointSettings,
        settings: NotificationSettings,
        janitor_of: Sequence[str] = (),
    ) -> None:
        """``janitor_of``: every endpoint's name when this one cleans up the journal."""
        self.driver = driver
        self.endpoint = endpoint
        self.name = endpoint.name
        self.settings = settings
        self.filter = EndpointFilter(endpoint)
        self.sender = Sender(endpoint)
        # Long enough that a holder waiting on a hanging receiver renews before it expires.
        ttl = max(settings.claim_ttl_seconds, 2 * endpoint.timeout_seconds + 2)
        self.claim = Claim(driver, endpoint.name, ttl)
        self.janitor_of = list(janitor_of)
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self._done: set[str] | None = None  # None: not loaded (not holding the claim)
        self._dirty = False
        self._events: dict[str, list[Event]] = {}  # unfinished batch → its events for us
        self._sent: dict[str, int] = {}  # unfinished batch → how many of them are handled
        self._attempts: dict[str, int] = {}  # event id → failed attempts
        self._housekept = 0.0
        self._saved = 0.0
        self._dead_purged = 0.0
        self._labels = EVENTS_PENDING.labels(self.name)

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while not self.stopping.is_set():
                wakeable = True
                try:
                    wait, wakeable = await self.step()
                except Exception as exc:
                    log.warning("events: delivery to %s: %s", self.name, exc, exc_info=True)
                    wait = self.settings.poll_seconds
                if wait > 0:
                    await self._sleep(wait, wakeable)
        finally:  # also when cancelled (an attempt outlived the shutdown's grace)
            await self._stopped()

    async def _sleep(self, seconds: float, wakeable: bool) -> None:
        """Wait, renewing the claim meanwhile; new local events end the wait when ``wakeable``
        (never a retry's backoff: a receiver that is down is not hammered)."""
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            waits = [asyncio.ensure_future(self.stopping.wait())]
            if wakeable:
                waits.append(asyncio.ensure_future(self.wake.wait()))
            _, running = await asyncio.wait(
                waits, timeout=min(left, self.claim.ttl / 4), return_when=asyncio.FIRST_COMPLETED
            )
            for task in running:
                task.cancel()
            if wakeable and self.wake.is_set():
                self.wake.clear()
                return
            if self._done is not None and not self.stopping.is_set():
                with contextlib.suppress(Exception):
                    if not await self.claim.hold():
                        self._lost()

    async def _stopped(self) -> None:
        with contextlib.suppress(Exception):
            await self._save(force=True)
        with contextlib.suppress(Exception):
            await self.claim.release()
        await self.sender.close()
        self._labels.set(0)

    def _lost(self) -> None:
        """Another replica holds the claim: forget our view of the progress."""
        self._done = None
        self._events.clear()
        self._sent.clear()
        self._attempts.clear()
        self._labels.set(0)

    async def step(self) -> tuple[float, bool]:
        """One round: returns how long to wait before the next, and whether new local events
        may cut that wait short."""
        poll = self.settings.poll_seconds
        self.wake.clear()
        if not await self.claim.hold():
            self._lost()
            # Another replica delivers: look again within a quarter of the claim's life (a
            # dead holder is replaced after the ttl anyway), not at every poll.
            return max(poll, self.claim.ttl / 4), False
        if self._done is None:
            self._done = await load_progress(self.driver, self.name)
        keys = await batch_keys(self.driver)
        await self._read(keys)
        for key in keys:
            if self._events.get(key) == []:
                # Nothing here for us: finished at once, even while an earlier event waits
                # for a retry (else the journal would keep every other endpoint's batches).
                self._finish(key)
        self._bound(keys)
        await self._housekeeping(keys)
        self._count_pending()  # then one less per event handled, not a recount per event
        for key in keys:
            if key in self._done:
                continue
            events = self._events.get(key)
            if events is None:
                continue  # deleted under us: finished by every endpoint
            while self._sent.get(key, 0) < len(events):
                if self.stopping.is_set() or not await self.claim.hold():
                    return 0, True
                retry = await self._deliver(events[self._sent.get(key, 0)])
                if retry is not None:
                    await self._save()
                    return retry, False
                self._sent[key] = self._sent.get(key, 0) + 1
                self._labels.dec()
            self._finish(key)
            await self._save()
        await self._save()
        self._count_pending()
        return poll, True

    # -- reading the journal ------------------------------------------------------------------

    async def _read(self, keys: list[str]) -> None:
        assert self._done is not None
        missing = [k for k in keys if k not in self._done and k not in self._events]
        for start in range(0, len(missing), READS_AT_ONCE):
            chunk = missing[start : start + READS_AT_ONCE]
            batches = await asyncio.gather(
                *(read_batch(self.driver, k) for k in chunk), return_exceptions=True
            )
            for key, batch in zip(chunk, batches, strict=True):
                if isinstance(batch, ValueError):
                    # Not ours to fix, and never worth blocking every later event for.
                    log.error("events: journal batch %s is unreadable, skipped: %s", key, batch)
                    batch = []
                elif isinstance(batch, BaseException):
                    raise batch
                if batch is not None:
                    self._events[key] = [e for e in batch if self.filter.matches(e)]

    def _waiting(self, keys: list[str]) -> list[tuple[str, int]]:
        assert self._done is not None
        return [
            (k, len(self._events[k]) - self._sent.get(k, 0))
            for k in keys
            if k not in self._done and k in self._events
        ]

    def _count_pending(self) -> None:
        if self._done is not None:
            self._labels.set(sum(n for _, n in self._waiting(list(self._events))))

    def _bound(self, keys: list[str]) -> None:
        """Keep at most ``queue_size`` events waiting: drop the oldest."""
        waiting = self._waiting(keys)
        excess = sum(n for _, n in waiting) - self.endpoint.queue_size
        if excess <= 0:
            return
        dropped = 0
        for key, n in waiting:
            take = min(n, excess - dropped)
            first = self._sent.get(key, 0)
            for event in self._events[key][first : first + take]:
                self._attempts.pop(event.id, None)
            self._sent[key] = first + take
            dropped += take
            if self._sent[key] == len(self._events[key]):
                self._finish(key)
            if dropped == excess:
                break
        EVENTS_DROPPED.labels(self.name).inc(dropped)
        log.warning(
            "events: queue of %s is full (%d): dropped the %d oldest events",
            self.name,
            self.endpoint.queue_size,
            dropped,
        )

    def _finish(self, key: str) -> None:
        assert self._done is not None
        self._done.add(key)
        self._dirty = True
        self._events.pop(key, None)
        self._sent.pop(key, None)

    async def _save(self, force: bool = False) -> None:
        """Save the progress, at most every SAVE_SECONDS unless ``force``: a replica taking
        over after a crash resends at most that much (at-least-once allows it)."""
        now = time.monotonic()
        if not (self._dirty and self._done is not None):
            return
        if not force and now - self._saved < SAVE_SECONDS:
            return
        body = json.dumps({"done": sorted(self._done)}).encode()
        await self.driver.put(paths.event_progress(self.name), body)
        self._dirty, self._saved = False, now

    # -- sending ------------------------------------------------------------------------------

    async def _deliver(self, event: Event) -> float | None:
        """Send once: None when the event is done with (accepted, or now a dead letter), else
        how long to wait before the next attempt."""
        try:
            await self.sender.send(event)
        except DeliveryFailed as exc:
            EVENTS_FAILED.labels(self.name).inc()
            attempts = self._attempts.get(event.id, 0) + 1
            self._attempts[event.id] = attempts
            if attempts < self.endpoint.max_attempts:
                log.warning(
                    "events: %s refused event %s (attempt %d of %d): %s",
                    self.name,
                    event.id,
                    attempts,
                    self.endpoint.max_attempts,
                    exc,
                )
                delay = self.endpoint.backoff_seconds * 2 ** (attempts - 1)
                return min(delay, self.endpoint.max_backoff_seconds)
            await self._dead_letter(event, str(exc), attempts)
            return None
        self._attempts.pop(event.id, None)
        EVENTS_DELIVERED.labels(self.name).inc()
        EVENTS_LATENCY.labels(self.name).observe(_age(event.timestamp))
        return None

    async def _dead_letter(self, event: Event, error: str, attempts: int) -> None:
        record = {"event": event.record(), "error": error, "attempts": attempts, "at": time.time()}
        await self.driver.put(paths.dead_letter(self.name, event.id), json.dumps(record).encode())
        self._attempts.pop(event.id, None)
        EVENTS_DEAD.labels(self.name).inc()
        log.error(
            "events: %s failed %d times on event %s, kept as a dead letter: %s",
            self.name,
            attempts,
            event.id,
            error,
        )

    # -- housekeeping -------------------------------------------------------------------------

    async def _housekeeping(self, keys: list[str]) -> None:
        now = time.monotonic()
        if now - self._housekept < HOUSEKEEPING_SECONDS:
            return
        self._housekept = now
        assert self._done is not None
        listed = set(keys)
        gone = self._done - listed  # deleted by the janitor: no need to remember them
        if gone:
            self._done -= gone
            self._dirty = True
        if self.janitor_of:
            await self._delete_finished(keys)
        if now - self._dead_purged >= 60 or not self._dead_purged:
            self._dead_purged = now
            await self._purge_dead_letters()

    async def _delete_finished(self, keys: list[str]) -> None:
        assert self._done is not None
        finished = set(k for k in keys if k in self._done)
        for other in self.janitor_of:
            if other != self.name and finished:
                finished &= await load_progress(self.driver, other)
        if finished:
            # The journal sees concurrent creates: never pruned (see StorageDriver.delete).
            await self.driver.delete_many(
                [paths.event_batch(k) for k in sorted(finished)], prune=False
            )

    async def _purge_dead_letters(self) -> None:
        cutoff = time.time() - self.settings.dead_letter_retention_seconds
        old = [
            info.key
            async for info in self.driver.walk(paths.dead_letters(self.name))
            if info.modified < cutoff
        ]
        if old:
            await self.driver.delete_many(old, prune=False)


__all__ = ["EndpointDelivery", "dead_letter_keys", "load_progress"]
