"""One garbage-collection run: lease, inventory, mark, plan, sweep, purge, report."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..registry.blobs import TOMBSTONE_STALE_SECONDS
from ..registry.digest import Digest
from ..registry.notify import Notifier
from ..storage.driver import StorageDriver
from .evict import EvictionPolicy, last_access
from .inventory import LAYER, REVISION, take_inventory
from .lease import Lease
from .mark import Marker
from .purge import purge_uploads
from .report import Progress, Report
from .sweep import Sweeper, Unit, plan

# A run that outlives its lease's record (6 h) stamps it again before a batch with less left.
LEASE_MIN_LEFT_SECONDS = 3600.0

# Storage clocks with one-second resolution (S3 Last-Modified): never call "old" what could
# have been written in the same second as the cut-off.
CLOCK_SLACK_SECONDS = 1.0

log = logging.getLogger("berth.gc")


class LeaseHeld(Exception):
    """Another garbage collection holds the lease."""


@dataclass(slots=True)
class GCOptions:
    delete_untagged: bool = False
    grace_period: float = 3600.0
    # The replicas' cache.reservation_reuse_seconds: a reservation that old still protects.
    reservation_reuse: float = 0.0
    # The replicas' cache.gc_lease_staleness_seconds: how old a look at this run's lease they
    # may rely on; the run writes no tombstone until that long after taking the lease.
    lease_staleness: float = 0.0
    dry_run: bool = False
    upload_purge_age: float = 7 * 24 * 3600.0
    purge_uploads: bool = True
    concurrency: int = 16
    use_lease: bool = True
    lease_settle: float = 1.0
    eviction: EvictionPolicy | None = None  # pull-through cache eviction (evict.py)


async def collect_garbage(
    driver: StorageDriver,
    options: GCOptions,
    progress: Progress | None = None,
    phase_hook: Callable[[str], Awaitable[None]] | None = None,
    events: Notifier | None = None,
) -> Report:
    """One run. ``phase_hook(name)`` is awaited at each phase boundary (tests widen the windows
    between listing, marking and sweeping with it). ``events``: records a delete event (actor
    ``gc``) for each manifest revision and blob link removed."""
    progress = progress or Progress(enabled=False)
    report = Report(
        dry_run=options.dry_run,
        delete_untagged=options.delete_untagged,
        grace_period_seconds=options.grace_period,
        reservation_reuse_seconds=options.reservation_reuse,
        lease_staleness_seconds=options.lease_staleness,
        upload_purge_age_seconds=options.upload_purge_age,
    )
    started = time.monotonic()
    run_id = uuid.uuid4().hex[:12]
    lease = Lease(driver, "gc", ttl=6 * 3600, settle=options.lease_settle)
    if not options.dry_run:
        if not options.use_lease:
            await lease.stamp()  # still needed: it gives the store's clock
        elif not await lease.acquire():
            holder = (await lease.current() or {}).get("holder")
            raise LeaseHeld(f"another garbage collection is running ({holder})")
    # The lease is written: replicas that looked before now skip tombstone listings for at
    # most ``lease_staleness`` more seconds (registry/gc_quiet.py).
    announced = time.monotonic()

    async def before_batch() -> None:
        wait = announced + options.lease_staleness - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        await lease.keep(LEASE_MIN_LEFT_SECONDS)

    sweeper: Sweeper | None = None
    try:
        # The store's clock, not ours: mtimes are compared against it.
        if options.dry_run:
            now = time.time()
        else:
            now = await lease.storage_time()
        cutoff = now - options.grace_period - options.reservation_reuse - CLOCK_SLACK_SECONDS

        progress.start("listing storage")
        inv = await take_inventory(driver, options.concurrency, progress.advance)
        report.objects_scanned = inv.objects
        report.blobs_total = sum(1 for b in inv.blobs.values() if b.data is not None)
        report.repositories = len(inv.repositories())

        if phase_hook:
            await phase_hook("listed")
        progress.start("marking")
        policy = options.eviction
        evict = None
        if policy is not None:
            access = await last_access(driver)

            def evict(candidates: set[Digest]) -> set[Digest]:
                assert policy is not None
                return policy.choose(candidates, inv, access, now)

        marker = Marker(
            driver,
            inv,
            delete_untagged=options.delete_untagged,
            cutoff=cutoff,
            concurrency=options.concurrency * 2,
            on_read=progress.advance,
            proxied=policy.proxied if policy is not None else None,
            evict=evict,
        )
        mark = await marker.run()
        report.manifests_read = mark.manifests_read
        report.blobs_evictable = len(mark.evicted)
        report.blobs_marked = sum(
            1 for d in mark.marked if d in inv.blobs and inv.blobs[d].data is not None
        )
        if mark.unreadable:
            # Fail safe (docs/gc.md): no blob is removed, nor anything in those repositories.
            report.unreadable = [
                {"repository": u.repository, "digest": u.digest, "tag": u.tag, "reason": u.reason}
                for u in mark.unreadable
            ]
            report.blob_sweep_skipped = True
            for u in mark.unreadable:
                log.error("gc: unreadable %s", u)
            message = (
                f"{len(mark.unreadable)} unreadable manifest(s) or tag link(s) in "
                f"{len(mark.unreadable_repositories)} repositories: no blob is removed, nor "
                f"anything in {', '.join(sorted(mark.unreadable_repositories))}"
            )
            log.error("gc: %s", message)
            report.errors.append(message)

        units = plan(inv, mark, cutoff, now)
        if phase_hook:
            await phase_hook("planned")
        if options.dry_run:
            _describe(report, units)
        else:
            progress.start("sweeping", total=len(units))
            sweeper = Sweeper(
                driver,
                run_id,
                cutoff,
                options.concurrency,
                progress.advance,
                inventory=inv,
                before_batch=before_batch,
            )
            stats = await sweeper.run(units)
            report.blobs_deleted = stats.blobs_deleted
            report.bytes_deleted = stats.bytes_deleted
            report.manifests_deleted = stats.manifests_deleted
            report.links_deleted = dict(stats.links_deleted)
            report.empty_blob_dirs_deleted = stats.empty_blob_dirs_deleted
            report.skipped_in_use = stats.skipped_in_use
            report.errors += stats.errors
            if events is not None:
                await _record_deletes(events, sweeper.removed, report)

        if options.purge_uploads:
            progress.start("purging uploads")
            purge = await purge_uploads(
                driver, options.upload_purge_age, now, inventory=inv, dry_run=options.dry_run
            )
            report.uploads_purged = purge.uploads_purged
            report.errors += purge.errors
            if options.dry_run:
                report.would_remove["upload"] = purge.purged
        progress.done()
    except BaseException:
        if options.dry_run:
            raise
        if sweeper is not None and sweeper.tombstoned:
            # Deletes of this run may still be in flight: writers keep listing for tombstones
            # until they would count its last tombstone as stale anyway.
            await lease.linger(TOMBSTONE_STALE_SECONDS)
        else:
            await lease.release()
        raise
    if not options.dry_run:
        await lease.release()
    report.objects_removed = (
        report.blobs_deleted
        + report.empty_blob_dirs_deleted
        + sum(report.links_deleted.values())
        + report.uploads_purged
    )
    report.elapsed_seconds = time.monotonic() - started
    report.objects_per_second = report.objects_scanned / max(report.elapsed_seconds, 1e-6)
    report.ok = not report.errors
    return report


async def _record_deletes(events: Notifier, removed: list[Unit], report: Report) -> None:
    manifests: list[tuple[str, Digest]] = []
    blobs: list[tuple[str, Digest]] = []
    for unit in removed:
        for link in unit.links:
            if link.digest is not None and link.kind == REVISION:
                manifests.append((link.repo, link.digest))
            elif link.digest is not None and link.kind == LAYER:
                blobs.append((link.repo, link.digest))
    try:
        await events.deleted_by_gc(manifests, blobs)
    except Exception as exc:  # what was deleted stays deleted; the report says what is missing
        message = f"could not record {len(manifests) + len(blobs)} delete events: {exc}"
        log.error("gc: %s", message)
        report.errors.append(message)


def _describe(report: Report, units: list[Unit]) -> None:
    blobs, links = [], []
    for unit in units:
        if unit.delete_data and unit.data is not None:
            blobs.append(f"{unit.digest} {unit.data.size}")
            report.blobs_deleted += 1
            report.bytes_deleted += unit.data.size
        elif unit.delete_data:
            report.empty_blob_dirs_deleted += 1
        for link in unit.links:
            links.append(f"{link.kind} {link.repo} {link.digest}")
            report.links_deleted[link.kind] = report.links_deleted.get(link.kind, 0) + 1
            if link.kind == "revision":
                report.manifests_deleted += 1
    report.would_remove["blob"] = blobs
    report.would_remove["link"] = sorted(links)
