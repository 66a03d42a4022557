"""Progress and the final summary: a live line on a terminal, plain lines otherwise, or JSON."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO


@dataclass(slots=True)
class Report:
    dry_run: bool
    delete_untagged: bool
    grace_period_seconds: float
    upload_purge_age_seconds: float
    # Kept on top of the grace period: how long replicas reuse a blob reservation.
    reservation_reuse_seconds: float = 0.0
    # Waited after taking the lease before the first tombstone (the replicas' view of it).
    lease_staleness_seconds: float = 0.0
    ok: bool = True
    elapsed_seconds: float = 0.0
    objects_scanned: int = 0
    manifests_read: int = 0
    repositories: int = 0
    blobs_total: int = 0
    blobs_marked: int = 0
    # Pull-through cache blobs the eviction policy left unmarked (removed unless in use).
    blobs_evictable: int = 0
    blobs_deleted: int = 0
    bytes_deleted: int = 0
    manifests_deleted: int = 0
    links_deleted: dict[str, int] = field(default_factory=dict)
    empty_blob_dirs_deleted: int = 0
    uploads_purged: int = 0
    skipped_in_use: int = 0
    objects_removed: int = 0
    objects_per_second: float = 0.0
    errors: list[str] = field(default_factory=list)
    # Present manifests (or tag links) that could not be read: {repository, digest, tag, reason}.
    # Any of them makes the run fail safe: no blob removed, nothing in their repositories.
    unreadable: list[dict[str, Any]] = field(default_factory=list)
    blob_sweep_skipped: bool = False
    # Dry run: what would be removed.
    would_remove: dict[str, list[Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class Progress:
    """Phase progress on stderr: one rewritten line on a TTY, a plain line per phase otherwise."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.phase = ""
        self.count = 0
        self.total: int | None = None
        self.started = time.monotonic()
        self._last = 0.0

    def start(self, phase: str, total: int | None = None) -> None:
        self._finish_line()
        self.phase, self.count, self.total = phase, 0, total
        self.started = time.monotonic()
        if self.enabled and not self.tty:
            suffix = f" ({total})" if total is not None else ""
            print(f"berth gc: {phase}{suffix}", file=self.stream, flush=True)

    def advance(self, n: int = 1) -> None:
        self.count += n
        if not self.tty:
            return
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._last = now
        of = f"/{self.total}" if self.total is not None else ""
        rate = self.count / max(now - self.started, 1e-6)
        self.stream.write(f"\r\x1b[Kberth gc: {self.phase}: {self.count}{of} ({rate:.0f}/s)")
        self.stream.flush()

    def done(self) -> None:
        self._finish_line()

    def _finish_line(self) -> None:
        if self.tty and self.phase:
            elapsed = time.monotonic() - self.started
            self.stream.write(f"\r\x1b[Kberth gc: {self.phase}: {self.count} in {elapsed:.1f}s\n")
            self.stream.flush()
        elif self.enabled and self.phase:
            elapsed = time.monotonic() - self.started
            print(
                f"berth gc: {self.phase}: {self.count} done in {elapsed:.1f}s",
                file=self.stream,
                flush=True,
            )
        self.phase = ""


def print_summary(report: Report, stream: TextIO, as_json: bool) -> None:
    if as_json:
        stream.write(json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n")
        return
    w = stream.write
    if report.dry_run:
        w("DRY RUN: nothing was removed. Would remove:\n")
        for kind, items in report.would_remove.items():
            for item in items:
                w(f"  {kind} {item}\n")
    verb = "would remove" if report.dry_run else "removed"
    links = ", ".join(f"{k} {v}" for k, v in sorted(report.links_deleted.items())) or "none"
    w(
        f"berth gc: {verb} {report.blobs_deleted} blobs ({human_bytes(report.bytes_deleted)}), "
        f"{report.manifests_deleted} manifest revisions, links: {links}, "
        f"{report.uploads_purged} stale uploads\n"
    )
    w(
        f"berth gc: {report.objects_removed} objects {verb}; scanned {report.objects_scanned} "
        f"objects and read {report.manifests_read} manifests in {report.elapsed_seconds:.2f}s "
        f"({report.objects_per_second:.0f} objects/s); {report.repositories} repositories, "
        f"{report.blobs_marked}/{report.blobs_total} blobs marked"
    )
    if report.skipped_in_use:
        w(f"; {report.skipped_in_use} kept because a writer touched them during the run")
    w("\n")
    for u in report.unreadable[:50]:
        what = f"tag {u['tag']} link" if u.get("tag") is not None else "manifest"
        w(f"berth gc: unreadable {what} {u['repository']}@{u['digest']}: {u['reason']}\n")
    for error in report.errors[:50]:
        w(f"berth gc: error: {error}\n")
    if not report.ok:
        w("berth gc: FAILED; storage is consistent, run it again to finish\n")
