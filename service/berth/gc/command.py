"""``berth gc``: the command-line front of one garbage-collection run."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys

from ..config import NotificationSettings, Settings
from ..events.recorder import build_recorder
from ..registry.notify import Notifier
from ..storage.driver import StorageDriver
from .evict import EvictionPolicy
from .report import Progress, print_summary
from .run import GCOptions, LeaseHeld, collect_garbage

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_LEASE = 0, 1, 2, 3
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str) -> float:
    """``0s``, ``90s``, ``30m``, ``1h``, ``1h30m``, ``7d``, ``1w``; a bare number is seconds."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(value) or not value:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (examples: 0s, 30m, 1h, 7d)")
    return total


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--delete-untagged",
        action="store_true",
        help="also remove manifests that no tag, index or kept subject refers to",
    )
    parser.add_argument(
        "--grace-period",
        type=parse_duration,
        metavar="DURATION",
        help="keep anything written or linked more recently than this (default 1h; e.g. 0s, 30m)",
    )
    parser.add_argument(
        "--upload-purge-age",
        type=parse_duration,
        metavar="DURATION",
        help="remove upload sessions older than this (default 1w, or the configured "
        "maintenance.upload_purge_age_seconds)",
    )
    parser.add_argument(
        "--no-purge-uploads", action="store_true", help="do not purge stale upload sessions"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be removed; change nothing"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="parallel storage requests (default 16)"
    )


def options_from(args: argparse.Namespace, settings: Settings) -> GCOptions:
    grace = args.grace_period
    if grace is None:
        grace = float(settings.maintenance.gc_grace_period_seconds)
    purge_age = args.upload_purge_age
    if purge_age is None:
        purge_age = float(settings.maintenance.upload_purge_age_seconds)
    return GCOptions(
        delete_untagged=args.delete_untagged,
        grace_period=grace,
        reservation_reuse=settings.cache.reservation_reuse_seconds,
        lease_staleness=settings.cache.gc_lease_staleness_seconds,
        dry_run=args.dry_run,
        upload_purge_age=purge_age,
        purge_uploads=not args.no_purge_uploads,
        concurrency=max(1, args.concurrency),
        eviction=EvictionPolicy.from_settings(settings.proxy),
    )


async def _run(
    driver: StorageDriver,
    options: GCOptions,
    as_json: bool,
    notifications: NotificationSettings | None = None,
) -> int:
    """``notifications``: where the deletes are recorded as events (none when unset)."""
    await driver.start()
    try:
        recorder = build_recorder(driver, notifications) if notifications else None
        events = Notifier(recorder) if recorder is not None else None
        report = await collect_garbage(
            driver, options, Progress(enabled=not as_json), events=events
        )
    finally:
        await driver.close()
    print_summary(report, sys.stdout, as_json)
    return EXIT_OK if report.ok else EXIT_FAILED


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    from ..storage.factory import create_driver

    options = options_from(args, settings)
    driver = create_driver(settings)
    try:
        return asyncio.run(_run(driver, options, args.json, settings.notifications))
    except LeaseHeld as exc:
        print(f"berth gc: {exc}", file=sys.stderr)
        return EXIT_LEASE
    except KeyboardInterrupt:
        print("berth gc: interrupted; storage is consistent, run it again", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        print(
            f"berth gc: failed: {type(exc).__name__}: {exc}; storage is consistent, "
            "run it again to finish",
            file=sys.stderr,
        )
        return EXIT_FAILED
