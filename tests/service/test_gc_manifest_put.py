"""Manifest PUT without the touch handshake (docs/gc.md, "Manifest PUT without touching").

A replica that last listed ``_berth/gc-runs/`` and saw no GC run checks a manifest's blobs with
plain stats, writes, then lists the markers again; only a change sends it through the full
handshake. Counted here (storage requests per PUT, never timed), and proven against GC runs
with a zero grace period placed in the PUT's windows, including a control run where the second
listing is suppressed: that one must leave a manifest pointing at a deleted blob, or this test
exercises nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from berth.app import create_app
from berth.gc.lease import GC_RUNS
from berth.gc.run import GCOptions, collect_garbage
from berth.registry.blobs import BlobStore
from berth.registry.digest import Digest
from berth.storage import paths
from berth.storage.filesystem import FilesystemDriver

from .conftest import error_code, make_settings, push_image
from .gc_fixtures import OCI_MANIFEST, CountingDriver, age, gc, manifest_blobs, problems

LAYERS = 3  # + the config: four referenced blobs


class HookDriver(CountingDriver):
    """Counts requests, and awaits ``on_put(key)`` before a put (to run a GC in that window)."""

    def __init__(self, root: Path) -> None:
        super().__init__(FilesystemDriver(root))
        self.on_put: Callable[[str], Awaitable[None]] | None = None

    async def put(self, key: str, data: bytes) -> None:
        hook, self.on_put = self.on_put, None
        if hook is not None:
            await hook(key)
        await super().put(key, data)


def _client(root: Path, driver: HookDriver) -> httpx.AsyncClient:
    app = create_app(make_settings(root), driver=driver)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r")


def _blob_store(client: httpx.AsyncClient) -> BlobStore:
    app = client._transport.app  # type: ignore[attr-defined]
    return app.state.registry.blobs  # type: ignore[no-any-return]


def _variant(body: bytes, n: int) -> bytes:
    manifest = json.loads(body)
    manifest["annotations"] = {"n": str(n)}
    return json.dumps(manifest).encode()


async def _put(c: httpx.AsyncClient, tag: str, body: bytes) -> httpx.Response:
    return await c.put(
        f"/v2/app/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST}
    )


async def test_requests_per_manifest_put(storage_root: Path) -> None:
    driver = HookDriver(storage_root)
    async with _client(storage_root, driver) as c:
        _digest, body = await push_image(c, "app", "v0", layers=LAYERS)
        blobs = len(manifest_blobs(body))
        assert blobs == LAYERS + 1
        # A fresh process has never listed the GC markers: full handshake (and the listing).
        fresh = _client(storage_root, HookDriver(storage_root))
        async with fresh:
            counter = _blob_store(fresh).driver
            assert isinstance(counter, HookDriver)
            counter.reset()
            assert (await _put(fresh, "v1", _variant(body, 1))).status_code == 201
            handshake = dict(counter.ops)
            counter.reset()
            assert (await _put(fresh, "v2", _variant(body, 2))).status_code == 201
            fast = dict(counter.ops)
    print(f"per manifest PUT with {blobs} blobs: handshake {handshake}, fast {fast}")
    # Before: per blob a stat of data, the touch, the blob directory listing and the link stat;
    # the manifest's own reserve (touch, listing, stat) and data; revision, tag index, tag.
    assert sum(handshake.values()) == 4 * blobs + 7 + 1  # + the marker listing
    # Now: per blob a stat of data and of the link; data, revision, tag index, the marker
    # listing, tag.
    assert fast == {"stat": 2 * blobs, "put": 4, "list": 1}
    assert sum(fast.values()) == 2 * blobs + 5


async def _garbage(c: httpx.AsyncClient, root: Path) -> tuple[bytes, list[str]]:
    """An image pushed, then deleted and aged: its blobs are garbage for a zero-grace GC, and
    the process that pushed it is warm (it has listed the markers, seen no run)."""
    digest, body = await push_image(c, "app", "old", layers=LAYERS, seed=b"reused")
    assert (await c.delete(f"/v2/app/manifests/{digest}")).status_code == 202
    assert _blob_store(c).gc_runs_seen == frozenset()
    age(root)
    return body, manifest_blobs(body)


async def test_gc_run_inside_the_window_is_noticed(storage_root: Path) -> None:
    """A client pushes again what a zero-grace GC collects (it saw the blobs with HEAD, so it
    uploads nothing). A whole run happens between the PUT's checks and its writes: the second
    marker listing differs, the full handshake finds the blobs gone, the PUT is refused and
    leaves no revision behind."""
    driver = HookDriver(storage_root)
    async with _client(storage_root, driver) as c:
        body, blobs = await _garbage(c, storage_root)
        for blob in blobs:
            assert (await c.head(f"/v2/app/blobs/{blob}")).status_code == 200
        digest = Digest.of(body)
        reports = []

        async def collect(key: str) -> None:
            assert key == paths.blob_data(digest)  # the PUT's first write, after its checks
            reports.append(await gc(storage_root, grace_period=0, delete_untagged=True))

        driver.on_put = collect
        r = await _put(c, "again", body)
        assert reports and reports[0].blobs_deleted >= len(blobs), reports
        assert r.status_code == 400 and error_code(r) == "MANIFEST_BLOB_UNKNOWN", r.text
        assert not (storage_root / paths.revision_link("app", digest)).exists()
        assert not (storage_root / paths.tag_dir("app", "again")).exists()
        assert await problems(storage_root) == []


async def test_gc_run_in_progress_is_noticed(storage_root: Path) -> None:
    """A run has announced itself and listed storage, and sweeps only once the PUT is done: the
    PUT sees the marker, touches every blob, and the run keeps them."""
    driver = HookDriver(storage_root)
    async with _client(storage_root, driver) as c:
        body, blobs = await _garbage(c, storage_root)
        planned, put_done = asyncio.Event(), asyncio.Event()

        async def hold(phase: str) -> None:
            if phase == "planned":
                planned.set()
                await put_done.wait()

        run = asyncio.create_task(
            collect_garbage(
                FilesystemDriver(storage_root),
                GCOptions(grace_period=0, lease_settle=0.0, delete_untagged=True),
                phase_hook=hold,
            )
        )

        async def wait_for_plan(key: str) -> None:
            await planned.wait()

        driver.on_put = wait_for_plan
        r = await _put(c, "again", body)
        put_done.set()
        report = await run
        assert r.status_code == 201, r.text
        assert report.ok and report.skipped_in_use >= len(blobs), report
        assert await problems(storage_root) == []
        assert _blob_store(c).gc_runs_seen and any(
            n.endswith(".running") for n in _blob_store(c).gc_runs_seen or ()
        )


async def test_without_the_second_listing_the_shortcut_is_unsafe(
    storage_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: the same window with the marker re-listing suppressed (as a replica that
    trusted a remembered reservation would). A zero-grace GC then deletes blobs the new manifest
    names. If this ever passes without problems, the test above proves nothing."""
    driver = HookDriver(storage_root)
    async with _client(storage_root, driver) as c:
        body, blobs = await _garbage(c, storage_root)
        store = _blob_store(c)

        async def stale() -> frozenset[str]:
            return store.gc_runs_seen or frozenset()

        monkeypatch.setattr(store, "gc_runs", stale)

        async def collect(key: str) -> None:
            report = await gc(storage_root, grace_period=0, delete_untagged=True)
            assert report.blobs_deleted >= len(blobs)

        driver.on_put = collect
        assert (await _put(c, "again", body)).status_code == 201
        found = await problems(storage_root)
        assert found, "a GC between the checks and the writes went unnoticed, harmlessly?"


async def test_markers(storage_root: Path) -> None:
    """A run that removes something leaves ``<run>.done`` (and removes older ``.done``); one that
    removes nothing, or a dry run, leaves no trace."""
    root = storage_root
    markers = root / GC_RUNS
    driver = HookDriver(root)
    async with _client(root, driver) as c:
        await push_image(c, "app", None, layers=1)
        await gc(root, grace_period=3600)
        assert not markers.exists() or list(markers.iterdir()) == []
        age(root)
        await gc(root, grace_period=0, dry_run=True, delete_untagged=True)
        assert not markers.exists() or list(markers.iterdir()) == []
        report = await gc(root, grace_period=0, delete_untagged=True)
        assert report.blobs_deleted == 3
        first = sorted(p.name for p in markers.iterdir())
        assert len(first) == 1 and first[0].endswith(".done")
        await push_image(c, "app", None, layers=1, seed=b"second")
        age(root)
        await gc(root, grace_period=0, delete_untagged=True)
        second = sorted(p.name for p in markers.iterdir())
        assert len(second) == 1 and second[0].endswith(".done") and second != first
