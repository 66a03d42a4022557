"""Sweep: plan what to remove from the inventory and the mark, then remove it safely.

The unit of work is one digest: its blob (when unmarked) and the repository links that would be
left dangling. Each unit runs the GC half of the handshake with writers (docs/gc.md):

1. write this run's tombstone ``blobs/<alg>/<xx>/<hex>/gc-<run>``;
2. re-read the blob's ``touch`` and ``data``: if either was written at or after the cutoff (or
   the data appeared or vanished since the inventory), drop the unit: a writer is using it;
3. delete the links, then the blob directory (which takes the tombstone with it), issuing no
   delete later than ``TOMBSTONE_DEADLINE_SECONDS`` after the tombstone was written.

A writer first rewrites ``touch`` and then looks for tombstones (``BlobStore.reserve``). Storage
is linearizable, so either step 2 sees the writer's touch, or the writer sees the tombstone and
waits until the unit is done. Deleting links before data means an interrupted run leaves at most
an unlinked blob or a link to a missing blob, both removed by the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from ..registry.blobs import TOMBSTONE_DEADLINE_SECONDS, TOMBSTONE_STALE_SECONDS
from ..registry.digest import Digest
from ..storage import paths
from ..storage.driver import ObjectInfo, PathNotFound, StorageDriver
from .inventory import LAYER, REFERRER, REVISION, TAG_CURRENT, TAG_INDEX, Inventory, Link
from .mark import MarkResult


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


class Sweeper:
    def __init__(
        self,
        driver: StorageDriver,
        run_id: str,
        cutoff: float,
        concurrency: int = 16,
        on_unit: Callable[[int], None] | None = None,
    ) -> None:
        self.driver = driver
        self.run_id = run_id
        self.cutoff = cutoff
        self.sem = asyncio.Semaphore(concurrency)
        self.on_unit = on_unit
        self.stats = SweepStats()

    async def run(self, units: list[Unit]) -> SweepStats:
        await asyncio.gather(*(self._guarded(u) for u in units))
        return self.stats

    async def _guarded(self, unit: Unit) -> None:
        async with self.sem:
            try:
                await self._unit(unit)
            except Exception as exc:  # recorded; the run fails, storage stays consistent
                self.stats.errors.append(f"{unit.digest}: {type(exc).__name__}: {exc}")
        if self.on_unit:
            self.on_unit(1)

    async def _stat(self, key: str) -> ObjectInfo | None:
        try:
            return await self.driver.stat(key)
        except PathNotFound:
            return None

    async def _unit(self, unit: Unit) -> None:
        d = unit.digest
        tombstone = paths.blob_tombstone(d, self.run_id)
        await self.driver.put(tombstone, b"")
        started = time.monotonic()
        touch, data = await asyncio.gather(
            self._stat(paths.blob_touch(d)), self._stat(paths.blob_data(d))
        )
        in_use = (
            (touch is not None and touch.modified >= self.cutoff)
            or (data is not None and data.modified >= self.cutoff)
            or ((data is None) != (unit.data is None))
        )
        if in_use:
            self.stats.skipped_in_use += 1
            await self.driver.delete(tombstone)
            return

        try:
            await self._remove(unit, started)
        except BaseException:
            # Past the deadline or a storage error: issue nothing more for this digest and let
            # writers go on at once (what was deleted already was safe to delete).
            with contextlib.suppress(Exception):
                await self.driver.delete(tombstone)
            raise

    async def _remove(self, unit: Unit, started: float) -> None:
        d = unit.digest
        tombstone = paths.blob_tombstone(d, self.run_id)

        def in_time() -> bool:
            return time.monotonic() - started < TOMBSTONE_DEADLINE_SECONDS

        for link in unit.links:
            if not in_time():
                raise TimeoutError("sweep deadline passed; the next run finishes this digest")
            await self.driver.delete(link.key)
            self.stats.links_deleted[link.kind] += 1
            if link.kind == REVISION:
                self.stats.manifests_deleted += 1
        if unit.delete_data:
            if not in_time():
                raise TimeoutError("sweep deadline passed; the next run finishes this digest")
            await self.driver.delete_tree(paths.blob_dir(d))
            if unit.data is not None:
                self.stats.blobs_deleted += 1
                self.stats.bytes_deleted += unit.data.size
            else:
                self.stats.empty_blob_dirs_deleted += 1
        else:
            with contextlib.suppress(PathNotFound):
                await self.driver.delete(tombstone)


__all__ = ["LAYER", "SweepStats", "Sweeper", "Unit", "plan"]
