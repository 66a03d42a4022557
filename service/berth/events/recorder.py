"""What the registry layer calls: keep the events some endpoint wants, journal them.

Built only when endpoints are configured; without any, the registry holds None and records
nothing at all (no event object is even built).
"""

from __future__ import annotations

from ..config import NotificationSettings
from ..storage.driver import StorageDriver
from .filters import EndpointFilter
from .journal import JournalWriter
from .model import Event


class Recorder:
    def __init__(self, driver: StorageDriver, settings: NotificationSettings) -> None:
        self.journal = JournalWriter(driver)
        self._filters = [EndpointFilter(e) for e in settings.endpoints]
        self.actions = frozenset(a for f in self._filters for a in f.actions)

    def wants(self, action: str) -> bool:
        return action in self.actions

    async def record(self, events: list[Event]) -> None:
        """Return once the events some endpoint wants are stored in the journal."""
        kept = [e for e in events if any(f.matches(e) for f in self._filters)]
        if kept:
            await self.journal.append(kept)


def build_recorder(driver: StorageDriver, settings: NotificationSettings) -> Recorder | None:
    return Recorder(driver, settings) if settings.endpoints else None


__all__ = ["Recorder", "build_recorder"]
