"""Maintenance inside ``berth serve``: scheduled upload purging (one replica at a time, under a
lease in storage) and the read-only switch, re-read from the --config file without a restart.

Read-only mode: ``storage.read_only`` is re-read from the configuration file every
``maintenance.config_reload_seconds`` (when the file's modification time changed) and at once on
SIGHUP. Only that setting applies live; everything else still needs a restart. The environment
still wins over the file (``BERTH_STORAGE__READ_ONLY`` pins it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
from pathlib import Path

from ..config import Settings, load_settings
from ..storage.driver import StorageDriver
from .lease import Lease
from .purge import purge_uploads

log = logging.getLogger("berth.maintenance")
CONFIG_FILE_ENV = "BERTH_INTERNAL_CONFIG_FILE"


class Maintenance:
    def __init__(
        self, driver: StorageDriver, settings: Settings, config_file: str | Path | None = None
    ) -> None:
        self.driver = driver
        self.settings = settings
        self.config_file = Path(config_file) if config_file else None
        self._tasks: list[asyncio.Task[None]] = []
        self._reload = asyncio.Event()
        self._mtime: float | None = None

    async def start(self) -> None:
        m = self.settings.maintenance
        if m.upload_purge_interval_seconds > 0:
            self._tasks.append(asyncio.create_task(self._purge_loop()))
        if self.config_file is not None:
            with contextlib.suppress(OSError):
                self._mtime = self.config_file.stat().st_mtime
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._reload.set)
            self._tasks.append(asyncio.create_task(self._reload_loop()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.config_file is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    # -- read-only switch ------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the file; apply ``storage.read_only``. True when it changed."""
        assert self.config_file is not None
        try:
            fresh = load_settings(self.config_file)
        except Exception as exc:  # a half-written or invalid file: keep the current state
            log.warning("config reload failed, keeping current settings: %s", exc)
            return False
        old = self.settings.storage.read_only
        new = fresh.storage.read_only
        if old != new:
            self.settings.storage.read_only = new
            log.warning("storage.read_only is now %s (reloaded from %s)", new, self.config_file)
        return old != new

    async def _reload_loop(self) -> None:
        period = self.settings.maintenance.config_reload_seconds
        while True:
            if period > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._reload.wait(), period)
            else:
                await self._reload.wait()
            forced = self._reload.is_set()
            self._reload.clear()
            try:
                mtime = self.config_file.stat().st_mtime if self.config_file else None
            except OSError:
                continue
            if forced or mtime != self._mtime:
                self._mtime = mtime
                await asyncio.to_thread(self.reload)

    # -- upload purging --------------------------------------------------------------------------

    async def purge_once(self, lease: Lease) -> int | None:
        """Purge if this replica gets the lease; the number purged, or None without the lease."""
        if self.settings.storage.read_only:
            return None
        if not await lease.acquire():
            return None
        now = await lease.storage_time()
        stats = await purge_uploads(
            self.driver, self.settings.maintenance.upload_purge_age_seconds, now
        )
        log.info(
            "upload purge: %d of %d sessions removed%s",
            stats.uploads_purged,
            stats.uploads_seen,
            f"; errors: {stats.errors[:3]}" if stats.errors else "",
        )
        # The lease is kept until it expires: the other replicas skip this interval.
        return stats.uploads_purged

    async def _purge_loop(self) -> None:
        interval = float(self.settings.maintenance.upload_purge_interval_seconds)
        lease = Lease(self.driver, "upload-purge", ttl=interval * 0.9)
        # Replicas start together: spread the first attempt (Distribution waits up to an hour).
        await asyncio.sleep(random.uniform(0.1, min(interval, 3600.0)))
        while True:
            try:
                await self.purge_once(lease)
            except Exception as exc:
                log.warning("upload purge failed (next attempt in %.0fs): %s", interval, exc)
            await asyncio.sleep(interval * random.uniform(0.95, 1.05))


def config_file_from_environment() -> str | None:
    return os.environ.get(CONFIG_FILE_ENV) or None
