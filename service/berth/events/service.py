"""The delivery loops of one process: started and stopped with the server."""

from __future__ import annotations

import asyncio
import contextlib

from ..config import NotificationSettings
from ..storage.driver import StorageDriver
from .delivery import EndpointDelivery
from .journal import JournalWriter


class EventDelivery:
    def __init__(
        self,
        driver: StorageDriver,
        settings: NotificationSettings,
        journal: JournalWriter | None = None,
    ) -> None:
        """``journal``: this process's writer, whose batches are delivered at once (others'
        are found every ``poll_seconds``)."""
        names = [e.name for e in settings.endpoints]
        self.deliveries = [
            EndpointDelivery(driver, e, settings, janitor_of=names if i == 0 else ())
            for i, e in enumerate(settings.endpoints)
        ]
        self._tasks: list[asyncio.Task[None]] = []
        if journal is not None:
            journal.on_written(self.wake)

    def wake(self) -> None:
        for delivery in self.deliveries:
            delivery.wake.set()

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(d.run(), name=f"berth-events-{d.name}") for d in self.deliveries
        ]

    async def stop(self, grace: float = 10.0) -> None:
        """Finish the attempts in flight (for at most ``grace`` seconds), save progress, let go of
        the claims so another replica goes on at once."""
        for delivery in self.deliveries:
            delivery.stopping.set()
        if not self._tasks:
            return
        _, running = await asyncio.wait(self._tasks, timeout=grace)
        for task in running:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []


__all__ = ["EventDelivery"]
