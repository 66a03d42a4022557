"""Upload purging, the maintenance lease, and the gc command line."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from berth.gc.command import parse_duration
from berth.gc.lease import Lease
from berth.gc.purge import parse_started_at, purge_uploads
from berth.storage.filesystem import FilesystemDriver

from .gc_fixtures import age, blob_path, gc, push_blob, push_image

# These tests age storage: see the fixture.
pytestmark = pytest.mark.usefixtures("no_reservation_reuse")

WEEK = 7 * 86400.0


async def _start_upload(c: httpx.AsyncClient, repo: str, chunk: bytes) -> str:
    r = await c.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202
    loc = r.headers["Location"]
    r = await c.patch(loc, content=chunk, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 202
    return r.headers["Location"]


def _backdate_uploads(root: Path, repo: str) -> None:
    uploads = root / f"docker/registry/v2/repositories/{repo}/_uploads"
    for started in uploads.glob("*/startedat"):
        started.write_text("2020-01-01T00:00:00.123456789Z")
    age(uploads, WEEK + 3600)


def _uploads(root: Path, repo: str) -> list[str]:
    d = root / f"docker/registry/v2/repositories/{repo}/_uploads"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


async def test_purge_removes_stale_uploads_only(client: httpx.AsyncClient, storage_root: Path):
    c = client
    await _start_upload(c, "app", b"stale chunk")
    stale = _uploads(storage_root, "app")
    assert len(stale) == 1
    _backdate_uploads(storage_root, "app")  # its startedat content and its files
    fresh_loc = await _start_upload(c, "app", b"fresh chunk, ")
    driver = FilesystemDriver(storage_root)

    dry = await purge_uploads(driver, WEEK, time.time(), dry_run=True)
    assert dry.uploads_purged == 1 and len(_uploads(storage_root, "app")) == 2
    stats = await purge_uploads(driver, WEEK, time.time())
    assert stats.uploads_purged == 1 and stats.errors == []
    remaining = _uploads(storage_root, "app")
    assert len(remaining) == 1 and remaining[0] != stale[0]
    # The fresh upload goes on and completes.
    data = b"fresh chunk, and the rest"
    digest = "sha256:" + __import__("hashlib").sha256(data).hexdigest()
    r = await c.put(fresh_loc, params={"digest": digest}, content=data[len(b"fresh chunk, ") :])
    assert r.status_code == 201, r.text
    assert blob_path(storage_root, digest).exists()


async def test_gc_purges_uploads_and_keeps_blobs_of_a_push_in_progress(
    client: httpx.AsyncClient, storage_root: Path
):
    c = client
    await _start_upload(c, "app", b"abandoned")
    _backdate_uploads(storage_root, "app")
    # A push in progress: blobs uploaded, manifest not yet PUT. Default grace period: kept.
    layer = await push_blob(c, "app", b"layer of a push in progress")
    report = await gc(storage_root)  # defaults: 1h grace, 1 week purge age
    assert report.uploads_purged == 1
    assert blob_path(storage_root, layer).exists()
    assert _uploads(storage_root, "app") == []


def test_parse_started_at_and_durations() -> None:
    assert parse_started_at(b"2024-05-01T10:00:00.123456789Z") == pytest.approx(1714557600.123456)
    assert parse_started_at(b"2024-05-01T10:00:00Z") == 1714557600.0
    assert parse_started_at(b"garbage") is None
    assert parse_duration("0s") == 0
    assert parse_duration("30m") == 1800
    assert parse_duration("1h30m") == 5400
    assert parse_duration("7d") == WEEK
    assert parse_duration("45") == 45
    for bad in ("", "1x", "h", "1h 2m", "-1s"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(bad)


async def test_lease_one_holder_at_a_time(storage_root: Path) -> None:
    driver = FilesystemDriver(storage_root)
    a = Lease(driver, "purge", ttl=60, settle=0.05, holder="a")
    b = Lease(driver, "purge", ttl=60, settle=0.05, holder="b")
    assert await a.acquire()
    assert not await b.acquire()
    assert await a.renew()
    await a.release()
    assert await b.acquire()
    assert not await a.renew()
    # An expired lease is taken over.
    expired = Lease(driver, "other", ttl=-1, settle=0.0, holder="dead")
    await expired.stamp()
    assert await Lease(driver, "other", settle=0.0, holder="c").acquire()


def _berth(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "berth.cli", *args], capture_output=True, text=True, timeout=60
    )


async def test_cli_dry_run_json_and_real_run(client: httpx.AsyncClient, storage_root: Path):
    c = client
    digest, _ = await push_image(c, "app", "v1", seed=b"cli")
    assert (await c.delete(f"/v2/app/manifests/{digest}")).status_code == 202
    age(storage_root)
    config = storage_root.parent / "berth.yaml"
    config.write_text(json.dumps({"storage": {"filesystem": {"root": str(storage_root)}}}))

    dry = _berth("gc", "--config", str(config), "--grace-period", "0s", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["dry_run"] and report["blobs_deleted"] == 4
    assert len(report["would_remove"]["blob"]) == 4
    assert blob_path(storage_root, digest).exists()

    text = _berth("gc", "--storage-root", str(storage_root), "--grace-period", "0s", "--dry-run")
    assert text.returncode == 0 and "would remove 4 blobs" in text.stdout
    assert "blob sha256:" in text.stdout

    real = _berth("gc", "--storage-root", str(storage_root), "--grace-period", "0s")
    assert real.returncode == 0, real.stderr
    assert "removed 4 blobs" in real.stdout and "objects/s" in real.stdout
    assert "berth gc: listing storage" in real.stderr  # plain progress lines off a terminal
    assert not blob_path(storage_root, digest).exists()

    bad = _berth("gc", "--storage-root", str(storage_root), "--grace-period", "soon")
    assert bad.returncode == 2
    missing = _berth("gc", "--config", str(storage_root / "nope.yaml"))
    assert missing.returncode == 2
