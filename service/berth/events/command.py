"""``berth events``: list pending and dead-lettered events, replay dead letters."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from ..config import NotificationSettings, Settings
from ..storage.driver import StorageDriver
from . import admin


def add_arguments(
    parser: argparse.ArgumentParser, common: Callable[[argparse.ArgumentParser], None]
) -> None:
    """``common`` adds the storage flags (--config, ...) to each action."""
    sub = parser.add_subparsers(dest="events_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="list pending events and dead letters")
    common(listing)
    listing.add_argument("--endpoint", metavar="NAME", help="only this endpoint")
    state = listing.add_mutually_exclusive_group()
    state.add_argument("--pending", action="store_true", help="only pending events")
    state.add_argument("--dead", action="store_true", help="only dead letters")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    replay = sub.add_parser(
        "replay", help="send dead letters again (each to the endpoint that failed it)"
    )
    common(replay)
    replay.add_argument("--endpoint", metavar="NAME", help="only this endpoint's dead letters")
    replay.add_argument(
        "--id", action="append", dest="ids", metavar="EVENT_ID", help="only this event (repeat)"
    )
    replay.add_argument("--json", action="store_true", help="one JSON object per line")


def _line(item: admin.Listed, as_json: bool) -> str:
    e, t = item.event, item.event.target
    if as_json:
        record: dict[str, Any] = {
            "endpoint": item.endpoint,
            "state": item.state,
            "event": e.distribution(),
        }
        if item.state == "dead":
            record.update(error=item.error, attempts=item.attempts)
        return json.dumps(record)
    what = f"{t.repository}:{t.tag}" if t.tag else f"{t.repository}@{t.digest}"
    fields = [item.endpoint, item.state, e.id, e.timestamp, e.action, what]
    if item.state == "dead":
        fields.append(f"({item.attempts} attempts: {item.error})")
    return "  ".join(fields)


async def _with_driver(
    settings: Settings, work: Callable[[StorageDriver, NotificationSettings], Awaitable[int]]
) -> int:
    from ..storage.factory import create_driver

    driver = create_driver(settings)
    await driver.start()
    try:
        return await work(driver, settings.notifications)
    finally:
        await driver.close()


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.notifications.endpoints:
        print("berth events: no notification endpoints are configured", file=sys.stderr)
        return 2

    async def listing(driver: StorageDriver, notifications: NotificationSettings) -> int:
        items: list[admin.Listed] = []
        if not args.dead:
            items += await admin.pending(driver, notifications, args.endpoint)
        if not args.pending:
            items += await admin.dead(driver, notifications, args.endpoint)
        for item in items:
            print(_line(item, args.json))
        return 0

    async def replaying(driver: StorageDriver, notifications: NotificationSettings) -> int:
        items = await admin.replay(driver, notifications, args.endpoint, args.ids)
        for item in items:
            print(_line(item, args.json))
        print(f"berth events: {len(items)} dead letter(s) queued again", file=sys.stderr)
        return 0

    work = listing if args.events_command == "list" else replaying
    return asyncio.run(_with_driver(settings, work))


__all__ = ["add_arguments", "run_command"]
