"""Sweep: plan what to remove from the inventory and the mark, then remove it safely, in batches.

The unit of work is one digest: its blob (when unmarked) and the repository links that would be
left dangling. Each unit runs the GC half of the handshake with writers (docs/gc.md):

1. write this run's tombstone ``blobs/<alg>/<xx>/<hex>/gc-<run>``;
2. re-read the blob's ``touch`` and ``data``: if either was written at or after the cutoff (or
   the data appeared or vanished since the inventory, or the tombstone is not there), drop the
   unit: a writer is using it;
3. delete the links, then the blob's objects, then the tombstones, issuing no delete later than
   ``TOMBSTONE_DEADLINE_SECONDS`` after the tombstone was written.

A writer first rewrites ``touch`` and then lists the blob directory for tombstones
(``BlobStore.reserve``). Storage is linearizable, so either step 2 sees the writer's touch, or
the writer sees the tombstone and waits until the unit is done. Deleting links before data means
an interrupted run leaves at most an unlinked blob or a link to a missing blob, both removed by
the next run; deleting the tombstone only after ``data`` is gone means a writer can never see
the data without the tombstone once the unit is past step 2.

Units run in batches (so that a store answering 60 requests/s pays about one request per
removed blob, not five):

* the tombstones of a batch are written concurrently;
* the re-check is one listing per blob prefix (``blobs/<alg>/<xx>/``) shared by every unit of
  the batch under it (batches are cut at prefix boundaries, so each prefix is listed once per
  run), or whatever is fewer requests by the inventory's counts: one listing of each blob
  directory, or (a small store: at most two pages) one listing of all of ``blobs/<alg>/``;
* deletes: three rounds of ``driver.delete_many(keys)`` per batch (ordered; on S3 one
  ``DeleteObjects`` per 1,000 keys): every link, then every blob's ``data`` and ``touch``, then
  every tombstone, so a tombstone goes only once the data it guards is gone.

A batch is sized so that its tombstones live about ``BATCH_TARGET_SECONDS`` (a writer waiting on
one gives up after ~9 s), adapting to the store's measured speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..registry.blobs import TOMBSTONE_DEADLINE_SECONDS, TOMBSTONE_STALE_SECONDS
from ..registry.digest import Digest
from ..storage import paths
from ..storage.driver import ObjectInfo, PathNotFound, StorageDriver
from .inventory import LAYER, REFERRER, REVISION, TAG_CURRENT, TAG_INDEX, Inventory, Link
from .mark import MarkResult

MAX_DELETE_KEYS = 1000  # S3 DeleteObjects
MIN_DELETE_KEYS = 100  # fewer keys per request only cost requests
LIST_PAGE_KEYS = 1000  # S3 ListObjectsV2 page
WHOLE_LISTING_PAGES = 2
BATCH_TARGET_SECONDS = 2.0
BATCH_MIN_UNITS = 16
BATCH_MAX_UNITS = 2000
BATCHES_IN_FLIGHT = 2


@dataclass(slots=True)
class Unit:
    digest: Digest
    delete_data: bool  # remove the blob directory (data, touch, tombstones)
    data: ObjectInfo | None  # the data object as listed (None: absent)
    links: list[Link] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return self.data.size if (self.delete_data and self.data) else 0


@dataclass(slots=True)
class SweepStats:
    blobs_deleted: int = 0
    bytes_deleted: int = 0
    manifests_deleted: int = 0  # revision links removed
    links_deleted: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    empty_blob_dirs_deleted: int = 0
    skipped_in_use: int = 0  # units dropped at the re-check: a writer touched them
    errors: list[str] = field(default_factory=list)


def plan(inv: Inventory, mark: MarkResult, cutoff: float, now: float) -> list[Unit]:
    """The units to run, from the inventory alone (no storage calls).

    Fail safe: when the mark found present manifests it could not read (``mark.unreadable``),
    no blob is removed anywhere (blobs are global: any of them may be what such a manifest
    names) and nothing at all in the repositories that hold one (an unreadable index may name
    any revision of its repository as a child, an unreadable referrer any subject). Other
    repositories are cleaned up as usual (a manifest references only content of its own
    repository), and so are blob directories without data (nothing to keep there).
    """
    failsafe = bool(mark.unreadable)
    frozen = mark.unreadable_repositories
    by_digest: dict[Digest, list[Link]] = defaultdict(list)
    for link in inv.links:
        if link.kind != TAG_CURRENT and link.digest is not None and link.repo not in frozen:
            by_digest[link.digest].append(link)

    def removable_link(link: Link, blob_gone: bool) -> bool:
        if link.modified >= cutoff:
            return False
        if blob_gone:
            return True
        if link.kind in (REVISION, TAG_INDEX, REFERRER):
            return link.digest not in mark.kept.get(link.repo, set())
        return False  # a layer link to a kept blob stays (mounts, Distribution's behaviour)

    units: list[Unit] = []
    for digest in set(inv.blobs) | set(by_digest):
        entry = inv.blobs.get(digest)
        links = by_digest.get(digest, [])
        data = entry.data if entry else None
        live_tombstones = entry is not None and any(
            m > now - TOMBSTONE_STALE_SECONDS for m in entry.tombstones.values()
        )
        if live_tombstones:
            continue  # another GC run is working on it right now
        touched_recently = entry is not None and (entry.touched or 0) >= cutoff
        if data is not None and digest not in mark.marked and not failsafe:
            fresh = (
                data.modified >= cutoff
                or touched_recently
                or any(link.modified >= cutoff for link in links)
            )
            if not fresh:
                units.append(Unit(digest, True, data, links))
                continue
        blob_gone = data is None
        doomed = [link for link in links if removable_link(link, blob_gone)]
        if blob_gone and entry is not None and not links and not touched_recently:
            units.append(Unit(digest, True, None, []))  # a directory with no data: leftovers
        elif doomed and not touched_recently:
            units.append(Unit(digest, False, data, doomed))
    units.sort(key=lambda u: str(u.digest))
    return units


def blob_prefix(digest: Digest) -> str:
    """``blobs/<alg>/<xx>``: the directory listed once for every unit below it."""
    return paths.blob_dir(digest).rsplit("/", 1)[0]


def prefix_objects(inv: Inventory) -> dict[str, int]:
    """Objects per blob prefix, as listed (to price a re-check listing in pages)."""
    counts: dict[str, int] = defaultdict(int)
    for digest, entry in inv.blobs.items():
        counts[blob_prefix(digest)] += (
            (entry.data is not None) + (entry.touched is not None) + len(entry.tombstones)
        )
    return counts


class DeadlinePassed(Exception):
    """The batch's tombstones are older than the deadline: issue no more deletes for it."""


@dataclass(slots=True)
class _Work:
    """One unit inside a batch."""

    unit: Unit
    tombstone: str
    listed: dict[str, ObjectInfo] = field(default_factory=dict)  # blob directory, re-read
    failed: bool = False


class Sweeper:
    def __init__(
        self,
        driver: StorageDriver,
        run_id: str,
        cutoff: float,
        concurrency: int = 16,
        on_unit: Callable[[int], None] | None = None,
        inventory: Inventory | None = None,
        batch_units: int | None = None,
        before_batch: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``before_batch`` is awaited before each batch's tombstones (the run waits there for
        the replicas' view of its lease, and keeps the lease)."""
        self.driver = driver
        self.before_batch = before_batch
        self.tombstoned = False  # a tombstone was (maybe) written: deletes may follow
        self.run_id = run_id
        self.cutoff = cutoff
        self.concurrency = concurrency
        self.sem = asyncio.Semaphore(concurrency)
        self.on_unit = on_unit
        self.stats = SweepStats()
        self.removed: list[Unit] = []  # units done (their links and blob are gone)
        self.prefix_objects = prefix_objects(inventory) if inventory is not None else {}
        self.batch_units = batch_units or max(BATCH_MIN_UNITS, concurrency * 8)
        self.adaptive = batch_units is None

    async def run(self, units: list[Unit]) -> SweepStats:
        groups: dict[str, list[Unit]] = defaultdict(list)
        for unit in units:
            groups[blob_prefix(unit.digest)].append(unit)
        pending = deque(groups[p] for p in sorted(groups))
        inflight: set[asyncio.Future[None]] = set()
        while pending:
            # Whole prefixes per batch (each is listed once), split only when one is too big.
            batch: list[Unit] = []
            while pending and len(batch) < self.batch_units:
                group, room = pending[0], self.batch_units - len(batch)
                if len(group) <= room:
                    batch += pending.popleft()
                elif not batch:
                    batch, pending[0] = group[:room], group[room:]
                else:
                    break
            # Two batches in flight: the next one's tombstones go out while this one's
            # listings and deletes (a few large requests) wait for answers.
            inflight.add(asyncio.ensure_future(self._timed(batch)))
            if len(inflight) >= BATCHES_IN_FLIGHT:
                _done, inflight = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
        if inflight:
            await asyncio.gather(*inflight)
        return self.stats

    async def _timed(self, batch: list[Unit]) -> None:
        started = time.monotonic()
        await self._batch(batch)
        if self.adaptive:
            per_unit = (time.monotonic() - started) / len(batch)
            wanted = int(BATCH_TARGET_SECONDS / max(per_unit, 1e-6))
            self.batch_units = max(BATCH_MIN_UNITS, min(BATCH_MAX_UNITS, wanted))

    # -- one batch -------------------------------------------------------------------------------

    async def _limited(self, coro: Awaitable[Any]) -> Any:
        async with self.sem:
            return await coro

    def _fail(self, work: _Work, exc: BaseException) -> None:
        if not work.failed:
            work.failed = True
            self.stats.errors.append(f"{work.unit.digest}: {type(exc).__name__}: {exc}")

    async def _batch(self, units: list[Unit]) -> None:
        works = [_Work(u, paths.blob_tombstone(u.digest, self.run_id)) for u in units]
        if self.before_batch is not None:
            await self.before_batch()
        self.tombstoned = True
        started = time.monotonic()  # before the first tombstone: the deadline's origin

        # 1. Tombstones, all at once.
        async def tombstone(work: _Work) -> None:
            try:
                await self._limited(self.driver.put(work.tombstone, b""))
            except Exception as exc:
                self._fail(work, exc)

        await asyncio.gather(*(tombstone(w) for w in works))

        # 2. The re-check: listings of what each blob directory holds now.
        live = [w for w in works if not w.failed]
        await self._relist(live)
        ready: list[_Work] = []
        release: list[_Work] = []  # in use (or failed): drop the tombstone at once
        for w in works:
            if w.failed:
                release.append(w)
            elif self._in_use(w):
                self.stats.skipped_in_use += 1
                release.append(w)
            else:
                ready.append(w)
        releasing = asyncio.ensure_future(self._release(release))

        # 3. Deletes: links, then blob contents, then tombstones.
        try:
            await self._delete_batched(ready, started)
        finally:
            await releasing
        if self.on_unit:
            self.on_unit(len(units))

    async def _relist(self, works: list[_Work]) -> None:
        by_prefix: dict[str, list[_Work]] = defaultdict(list)
        for w in works:
            by_prefix[blob_prefix(w.unit.digest)].append(w)
        by_dir = {paths.blob_dir(w.unit.digest): w for w in works}

        async def walk(prefix: str, members: Sequence[_Work]) -> None:
            try:
                async for info in self.driver.walk(prefix):
                    directory, _, name = info.key.rpartition("/")
                    work = by_dir.get(directory)
                    if work is not None:
                        work.listed[name] = info
            except PathNotFound:
                pass
            except Exception as exc:
                for w in members:
                    self._fail(w, exc)

        # The cheapest listing, priced in pages from the inventory: each blob directory, each
        # blob prefix, or (few units spread thinly, a small store) the whole ``blobs/<alg>``.
        by_alg: dict[str, list[str]] = defaultdict(list)
        for prefix in by_prefix:
            by_alg[prefix.rsplit("/", 1)[0]].append(prefix)
        jobs = []
        for alg, prefixes in by_alg.items():
            per_prefix: list[tuple[str, list[_Work]]] = []
            cost = 0
            for prefix in prefixes:
                members = by_prefix[prefix]
                pages = _pages(self.prefix_objects.get(prefix, 0) + len(members))
                if len(members) >= pages:
                    per_prefix.append((prefix, members))
                    cost += pages
                else:
                    per_prefix += [(paths.blob_dir(w.unit.digest), [w]) for w in members]
                    cost += len(members)
            everything = sum(n for p, n in self.prefix_objects.items() if p.startswith(alg + "/"))
            whole = _pages(everything + sum(len(by_prefix[p]) for p in prefixes))
            # Its pages come one after the other: only for a store small enough to list fast.
            if whole < cost and whole <= WHOLE_LISTING_PAGES:
                members = [w for p in prefixes for w in by_prefix[p]]
                jobs.append(self._limited(walk(alg, members)))
            else:
                jobs += [self._limited(walk(prefix, members)) for prefix, members in per_prefix]
        await asyncio.gather(*jobs)

    def _in_use(self, w: _Work) -> bool:
        touch = w.listed.get("touch")
        data = w.listed.get(paths.BLOB_DATA)
        name = w.tombstone.rsplit("/", 1)[1]
        return (
            name not in w.listed  # not ours to act on (another run cleared the directory)
            or (touch is not None and touch.modified >= self.cutoff)
            or (data is not None and data.modified >= self.cutoff)
            or ((data is None) != (w.unit.data is None))
        )

    async def _release(self, works: Iterable[_Work]) -> None:
        keys = [w.tombstone for w in works]
        if not keys:
            return
        with contextlib.suppress(Exception):
            await asyncio.gather(
                *(self._limited(self.driver.delete_many(c)) for c in _chunks(keys, MAX_DELETE_KEYS))
            )

    def _check(self, started: float) -> None:
        if time.monotonic() - started >= TOMBSTONE_DEADLINE_SECONDS:
            raise DeadlinePassed("sweep deadline passed; the next run finishes this digest")

    def _links_done(self, w: _Work) -> None:
        for link in w.unit.links:
            self.stats.links_deleted[link.kind] += 1
            if link.kind == REVISION:
                self.stats.manifests_deleted += 1

    def _blob_done(self, w: _Work) -> None:
        if w.unit.data is not None:
            self.stats.blobs_deleted += 1
            self.stats.bytes_deleted += w.unit.data.size
        else:
            self.stats.empty_blob_dirs_deleted += 1

    async def _delete_batched(self, works: list[_Work], started: float) -> None:
        """Three ordered rounds of ``delete_many``; a failed request fails only its units."""
        delete_many = self.driver.delete_many

        async def round_(items: list[tuple[str, _Work]], deadline: bool = True) -> None:
            async def one(chunk: list[tuple[str, _Work]]) -> None:
                async with self.sem:
                    try:
                        if deadline:
                            self._check(started)
                        await delete_many([key for key, _ in chunk])
                    except Exception as exc:
                        for _, w in chunk:
                            self._fail(w, exc)

            # Up to 1,000 keys a request, but spread over ``concurrency`` requests when there
            # are fewer: a store works through one request's keys one after the other.
            size = min(MAX_DELETE_KEYS, max(MIN_DELETE_KEYS, -(-len(items) // self.concurrency)))
            await asyncio.gather(*(one(c) for c in _chunks(items, size)))

        await round_([(link.key, w) for w in works for link in w.unit.links])
        blobs = [w for w in works if w.unit.delete_data and not w.failed]
        await round_(
            [
                (f"{paths.blob_dir(w.unit.digest)}/{name}", w)
                for w in blobs
                for name in sorted(w.listed)
                if not name.startswith(paths.TOMBSTONE_PREFIX)
            ]
        )
        # Tombstones last (every one listed in a removed directory: stale ones of dead runs
        # too), and for failed units only ours, so writers go on at once. Removing a tombstone
        # is never unsafe (the data it guarded is gone, or was never touched): no deadline.
        last: list[tuple[str, _Work]] = []
        for w in works:
            if w.unit.delete_data and not w.failed:
                d = paths.blob_dir(w.unit.digest)
                last += [(f"{d}/{n}", w) for n in w.listed if n.startswith(paths.TOMBSTONE_PREFIX)]
            else:
                last.append((w.tombstone, w))
        failed_before = {id(w) for w in works if w.failed}
        await round_(last, deadline=False)
        for w in works:
            if id(w) in failed_before:
                continue
            self._links_done(w)
            self.removed.append(w.unit)
            if w.unit.delete_data:
                self._blob_done(w)


def _pages(objects: int) -> int:
    return max(1, math.ceil(objects / LIST_PAGE_KEYS))


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


__all__ = ["LAYER", "SweepStats", "Sweeper", "Unit", "plan"]
