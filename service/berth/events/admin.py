"""What ``berth events`` shows and does: pending events and dead letters, and replaying them."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from dataclasses import dataclass

from ..config import NotificationEndpointSettings, NotificationSettings
from ..storage import paths
from ..storage.driver import PathNotFound, StorageDriver
from .delivery import dead_letter_keys, load_progress
from .filters import EndpointFilter
from .journal import JournalWriter, batch_keys, read_batch
from .model import Event

log = logging.getLogger("berth.events")


@dataclass(frozen=True, slots=True)
class Listed:
    endpoint: str
    state: str  # pending | dead
    event: Event
    error: str = ""
    attempts: int = 0


def _chosen(
    settings: NotificationSettings, endpoint: str | None
) -> list[NotificationEndpointSettings]:
    chosen = [e for e in settings.endpoints if endpoint is None or e.name == endpoint]
    if endpoint is not None and not chosen:
        raise ValueError(f"no endpoint named {endpoint!r} is configured")
    return chosen


async def pending(
    driver: StorageDriver, settings: NotificationSettings, endpoint: str | None = None
) -> list[Listed]:
    """Events recorded and not yet finished by each endpoint, oldest first (an endpoint's
    delivery in progress may have sent the first few already)."""
    keys = await batch_keys(driver)
    read = await asyncio.gather(*(read_batch(driver, k) for k in keys), return_exceptions=True)
    batches: list[list[Event] | None] = []
    for key, batch in zip(keys, read, strict=True):
        if isinstance(batch, ValueError):  # skipped by delivery too (logged there)
            log.warning("journal batch %s is unreadable: %s", key, batch)
            batch = None
        elif isinstance(batch, BaseException):
            raise batch
        batches.append(batch)
    listed: list[Listed] = []
    for e in _chosen(settings, endpoint):
        done = await load_progress(driver, e.name)
        wanted = EndpointFilter(e)
        for key, events in zip(keys, batches, strict=True):
            if key not in done and events is not None:
                listed += [Listed(e.name, "pending", ev) for ev in events if wanted.matches(ev)]
    return listed


async def dead(
    driver: StorageDriver, settings: NotificationSettings, endpoint: str | None = None
) -> list[Listed]:
    listed: list[Listed] = []
    for e in _chosen(settings, endpoint):
        for name in await dead_letter_keys(driver, e.name):
            try:
                letter = json.loads(await driver.get(paths.dead_letter(e.name, name)))
                listed.append(
                    Listed(
                        e.name,
                        "dead",
                        Event.from_record(letter["event"]),
                        str(letter.get("error", "")),
                        int(letter.get("attempts", 0)),
                    )
                )
            except PathNotFound:
                continue
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                log.warning("dead letter %s of %s is unreadable: %s", name, e.name, exc)
    listed.sort(key=lambda item: item.event.timestamp)
    return listed


async def replay(
    driver: StorageDriver,
    settings: NotificationSettings,
    endpoint: str | None = None,
    ids: list[str] | None = None,
) -> list[Listed]:
    """Journal dead letters again, each for its own endpoint only (same event id, so a
    receiver that did get it after all deduplicates), then remove them. Returns them."""
    letters = [d for d in await dead(driver, settings, endpoint) if not ids or d.event.id in ids]
    if letters:
        events = [dataclasses.replace(d.event, only=(d.endpoint,)) for d in letters]
        await JournalWriter(driver).append(events)
        await driver.delete_many(
            [paths.dead_letter(d.endpoint, d.event.id) for d in letters], prune=False
        )
    return letters


__all__ = ["Listed", "dead", "pending", "replay"]
