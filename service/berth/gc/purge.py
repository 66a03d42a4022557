"""Upload purging: remove upload sessions older than a configured age.

A session's age is its ``startedat`` (Distribution's RFC 3339 timestamp, which Berth writes too),
else the newest object in it. Each stale session is removed with ``driver.delete_tree`` on its
directory, which also ends what a writer keeps in the store (on S3 it aborts the multipart
upload the session's state names). ``driver.abort_stale_uploads`` then aborts any other
multipart upload started before the cut-off that no session names (0 on the filesystem).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import datetime

from ..storage import paths
from ..storage.driver import PathNotFound, StorageDriver
from .inventory import Inventory, Upload, take_inventory


@dataclass(slots=True)
class PurgeStats:
    uploads_seen: int = 0
    uploads_purged: int = 0
    multipart_aborted: int = 0
    purged: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def parse_started_at(raw: bytes) -> float | None:
    text = raw.decode(errors="replace").strip()
    if not text:
        return None
    text = text.replace("Z", "+00:00")
    # Distribution writes nanoseconds; fromisoformat takes at most microseconds.
    if "." in text:
        head, _, tail = text.partition(".")
        digits = "".join(c for c in tail if c.isdigit())
        zone = tail[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


async def _started(driver: StorageDriver, upload: Upload) -> float:
    if upload.started_key is not None:
        with contextlib.suppress(PathNotFound):
            started = parse_started_at(await driver.get(upload.started_key))
            if started is not None:
                return started
    return upload.newest


async def cancel_upload(driver: StorageDriver, repo: str, upload_id: str) -> None:
    # delete_tree ends what a writer keeps in the store too (S3: aborts its multipart upload).
    await driver.delete_tree(paths.upload_dir(repo, upload_id))


async def purge_uploads(
    driver: StorageDriver,
    older_than: float,
    now: float,
    *,
    inventory: Inventory | None = None,
    dry_run: bool = False,
    concurrency: int = 16,
) -> PurgeStats:
    """Remove sessions started before ``now - older_than`` (seconds, the store's clock)."""
    inv = inventory if inventory is not None else await take_inventory(driver)
    stats = PurgeStats(uploads_seen=len(inv.uploads))
    cutoff = now - older_than
    sem = asyncio.Semaphore(concurrency)

    async def one(upload: Upload) -> None:
        async with sem:
            try:
                started = await _started(driver, upload)
                # Both the start and the newest chunk must be old: a slow, live upload stays.
                if started >= cutoff or upload.newest >= cutoff:
                    return
                stats.purged.append(f"{upload.repo}/_uploads/{upload.upload_id}")
                if not dry_run:
                    await cancel_upload(driver, upload.repo, upload.upload_id)
                stats.uploads_purged += 1
            except Exception as exc:
                stats.errors.append(f"{upload.repo} {upload.upload_id}: {exc}")

    await asyncio.gather(*(one(u) for u in inv.uploads.values()))
    # Multipart uploads no session names any more (a crash between abort and delete, or
    # writers outside _uploads): drivers that have them abort those started before the cut-off.
    if not dry_run:
        try:
            stats.multipart_aborted = await driver.abort_stale_uploads(cutoff)
        except Exception as exc:
            stats.errors.append(f"aborting stale multipart uploads: {exc}")
    stats.purged.sort()
    return stats
