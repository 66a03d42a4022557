"""cache.gc_lease_staleness_seconds, on every driver.

A write that relies on a blob skips listing its directory for GC tombstones while the replica's
last look at the GC lease, sent within the window, found none; a GC run waits that window after
taking its lease before its first tombstone (registry/gc_quiet.py, docs/gc.md). Then, too, what
follows the reservation (a mount's link write, a manifest PUT's link read) is sent alongside its
mark. These tests check that the listing really goes away and the link goes alongside, that a
lease means listing again, that the GC waits, and that a GC which knows the window keeps what a
quiet writer (an upload, a mount) relies on while one that does not (the control) loses it: so
the wait is what makes the shortcut safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from berth.app import create_app
from berth.config import Settings
from berth.gc.run import GCOptions, collect_garbage
from berth.gc.verify import find_problems
from berth.registry.digest import Digest
from berth.registry.gc_quiet import GC_LEASE, GCQuiet, lease_active
from berth.storage import paths
from berth.storage.driver import PathNotFound, StorageDriver

from .conftest import Backend, push_blob, push_image
from .gc_fixtures import RecordingDriver, gc

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# Past a zero-grace cut-off (1 s slack) at S3's one-second mtime resolution.
PAST_CUTOFF = 2.2
# Long enough for a GC run to reach its deletes while a look is still trusted.
WINDOW = 5.0


def _settings(backend: Backend, window: float) -> Settings:
    base = backend.settings()
    cache = base.cache.model_copy(
        update={"gc_lease_staleness_seconds": window, "reservation_reuse_seconds": 0.0}
    )
    return base.model_copy(update={"cache": cache})


class HeldTouchDriver(RecordingDriver):
    """Holds each write of a blob's ``touch`` until a request for the repository link in
    ``links`` (by the touched digest) starts, or 0.5 s pass: ``overlapped`` says, per touch,
    whether the link request was sent alongside it."""

    def __init__(self, inner: StorageDriver) -> None:
        super().__init__(inner)
        self.links: dict[str, str] = {}  # touch key -> link key
        self.started: dict[str, asyncio.Event] = {}
        self.overlapped: list[bool] = []

    def watch(self, digest: Digest, link: str) -> None:
        self.links[paths.blob_touch(digest)] = link
        self.started[link] = asyncio.Event()

    def _starting(self, key: str) -> None:
        if key in self.started:
            self.started[key].set()

    async def put(self, key: str, data: bytes) -> None:
        self._starting(key)
        if key in self.links:
            link = self.started[self.links[key]]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(link.wait(), 0.5)
            self.overlapped.append(link.is_set())
        await super().put(key, data)

    async def stat(self, key: str) -> Any:
        self._starting(key)
        return await super().stat(key)


@contextlib.asynccontextmanager
async def _replica(
    backend: Backend, window: float = WINDOW, driver_type: type[RecordingDriver] = RecordingDriver
) -> AsyncIterator[tuple[httpx.AsyncClient, Any, GCQuiet]]:
    async with backend.driver() as inner:
        driver = driver_type(inner)
        app = create_app(_settings(backend, window), driver=driver)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://r") as c:
            yield c, driver, app.state.registry.blobs.gc_quiet


class GatedDriver(RecordingDriver):
    """A GC's view of storage whose deletes wait for ``gate``; ``reached`` is set when the
    first one does (the run is past its tombstones and re-check)."""

    def __init__(self, inner: StorageDriver) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()
        self.reached = asyncio.Event()
        self.times: dict[str, float] = {}  # first write under each kind of key

    async def put(self, key: str, data: bytes) -> None:
        kind = "tombstone" if paths.TOMBSTONE_PREFIX in key.rsplit("/", 1)[-1] else key
        self.times.setdefault(kind, time.monotonic())
        await super().put(key, data)

    async def delete(self, key: str, *, prune: bool = True) -> None:
        self.reached.set()
        await self.gate.wait()
        await super().delete(key, prune=prune)

    async def delete_many(self, keys: Any, *, prune: bool = True) -> None:
        self.reached.set()
        await self.gate.wait()
        await self.inner.delete_many(keys, prune=prune)


def _blob_dirs_listed(driver: RecordingDriver) -> list[str]:
    return [p for p in driver.listed if "/blobs/" in p]


async def _garbage(c: httpx.AsyncClient, seed: bytes) -> tuple[bytes, str]:
    """An image whose manifest is deleted, old enough for a zero-grace GC: its layer (content,
    digest) is garbage."""
    layer = seed + b"layer" + bytes([0]) * 100
    digest, _body = await push_image(c, "app", "v1", seed=seed, layers=1)
    assert (await c.delete(f"/v2/app/manifests/{digest}")).status_code == 202
    await asyncio.sleep(PAST_CUTOFF)
    return layer, digest


async def _settled_look(quiet: GCQuiet) -> None:
    """A look at the lease, completed after any look started in the background (one completing
    during the writer's reservation makes ``covers`` refuse it: it may have begun after)."""
    running = quiet._looks.running("lease")
    if running is not None:
        await running
    await quiet.look()


async def _present_in(backend: Backend, repo: str, blob: str) -> bool:
    async with _replica(backend, window=0) as (fresh, _d, _q):  # no cache: what storage holds
        return (await fresh.head(f"/v2/{repo}/blobs/{blob}")).status_code == 200


async def _rely(c: httpx.AsyncClient, writer: str, layer: bytes) -> str:
    """Make repository ``other`` rely on existing content ``layer`` (linked in ``app``): an
    upload of it, or a mount from ``app``. Returns its digest."""
    if writer == "upload":
        return await push_blob(c, "other", layer)
    blob = str(Digest.of(layer))
    r = await c.post("/v2/other/blobs/uploads/", params={"mount": blob, "from": "app"})
    assert r.status_code == 201, r.text
    return blob


async def test_after_a_quiet_look_writes_list_no_blob_directory(backend: Backend) -> None:
    async with _replica(backend) as (c, driver, quiet):
        _digest, body = await push_image(c, "app", "v1", seed=b"quiet")
        await quiet.look()
        driver.reset()
        m = json.loads(body)
        m["annotations"] = {"note": "second"}
        r = await c.put(
            "/v2/app/manifests/v2",
            content=json.dumps(m).encode(),
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert r.status_code == 201, r.text
        await push_blob(c, "app", b"small and new")
        await push_blob(c, "other", b"small and new")  # existing content: reserved again
        assert _blob_dirs_listed(driver) == []
        assert quiet.skipped >= 5  # three referenced blobs, the manifest, the blob, again
        assert paths.lease(GC_LEASE) not in driver.got  # no look needed: the last is fresh


@pytest.mark.parametrize("quiet_gc", [True, False], ids=["after a quiet look", "gc running"])
async def test_a_mount_sends_its_link_alongside_its_touch(backend: Backend, quiet_gc: bool) -> None:
    """After a quiet look the mount's link write goes with its touch (one round trip); while a
    GC holds its lease it follows the touch and the listing, as the handshake requires."""
    async with (
        _replica(backend, driver_type=HeldTouchDriver) as (c, driver, quiet),
        backend.driver() as store,
    ):
        blob = await push_blob(c, "app", b"mounted alongside")
        if not quiet_gc:
            record = {"holder": "gc", "expires": time.time() + 600}
            await store.put(paths.lease(GC_LEASE), json.dumps(record).encode())
        await _settled_look(quiet)
        driver.watch(Digest.parse(blob), paths.layer_link("other", Digest.parse(blob)))
        driver.reset()
        r = await c.post("/v2/other/blobs/uploads/", params={"mount": blob, "from": "app"})
        assert r.status_code == 201, r.text
        assert driver.overlapped == [quiet_gc]
        assert len(_blob_dirs_listed(driver)) == (0 if quiet_gc else 1)
        assert await _present_in(backend, "other", blob)


async def test_a_manifest_put_reads_its_links_alongside_the_touches(backend: Backend) -> None:
    """Each referenced blob's layer link is read with its touch, on a replica that saw the
    blobs (touch and size read together) and on one that did not (size read first)."""
    async with _replica(backend) as (a, _d, _q):
        _digest, body = await push_image(a, "app", "v1", seed=b"links alongside", layers=1)
    refs = [Digest.parse(d["digest"]) for d in [json.loads(body)["config"]]]
    refs += [Digest.parse(d["digest"]) for d in json.loads(body)["layers"]]
    m = json.loads(body)
    for note in ("seen", "unseen"):
        async with _replica(backend, driver_type=HeldTouchDriver) as (c, driver, quiet):
            if note == "seen":
                for ref in refs:
                    assert (await c.head(f"/v2/app/blobs/{ref}")).status_code == 200
            await _settled_look(quiet)
            for ref in refs:
                driver.watch(ref, paths.layer_link("app", ref))
            m["annotations"] = {"note": note}
            r = await c.put(
                f"/v2/app/manifests/{note}",
                content=json.dumps(m).encode(),
                headers={"Content-Type": OCI_MANIFEST},
            )
            assert r.status_code == 201, r.text
            assert driver.overlapped == [True, True], note
            assert _blob_dirs_listed(driver) == []


async def test_a_mount_of_a_blob_gone_meanwhile_leaves_no_link(backend: Backend) -> None:
    """The link sent alongside the touch of a blob that turns out to be gone (seen present
    lately, removed since) is taken back: the mount falls back to an upload session."""
    async with _replica(backend) as (c, driver, quiet), backend.driver() as store:
        blob = await push_blob(c, "app", b"gone behind its back")
        digest = Digest.parse(blob)
        await store.delete_tree(paths.blob_dir(digest))
        await _settled_look(quiet)
        driver.reset()
        r = await c.post("/v2/other/blobs/uploads/", params={"mount": blob, "from": "app"})
        assert r.status_code == 202, r.text
        assert paths.layer_link("other", digest) in driver.written  # sent alongside
        with pytest.raises(PathNotFound):
            await store.stat(paths.layer_link("other", digest))
        assert (await c.head(f"/v2/other/blobs/{blob}")).status_code == 404


@pytest.mark.parametrize(
    ("record", "lists"),
    [
        ({"holder": "gc", "expires": "now+600"}, True),
        ({"holder": "gc", "expires": "now-120"}, False),  # a GC that died: past its expiry
        ("not json", True),
    ],
    ids=["live lease", "expired lease", "unreadable lease"],
)
async def test_a_gc_lease_means_listing(backend: Backend, record: Any, lists: bool) -> None:
    async with _replica(backend) as (c, driver, quiet), backend.driver() as store:
        if isinstance(record, dict):
            sign, delta = record["expires"][3], float(record["expires"][4:])
            record = dict(record, expires=time.time() + (delta if sign == "+" else -delta))
            raw = json.dumps(record).encode()
        else:
            raw = record.encode()
        await store.put(paths.lease(GC_LEASE), raw)
        assert lease_active(raw, time.time()) is lists
        await _settled_look(quiet)
        driver.reset()
        blob = await push_blob(c, "app", b"written while a gc may run")
        assert bool(_blob_dirs_listed(driver)) is lists
        assert (await c.head(f"/v2/app/blobs/{blob}")).status_code == 200


async def test_only_a_look_completed_before_the_writer_began_counts(backend: Backend) -> None:
    """A look that completed after the writer sent its mark proves nothing (a GC could have
    removed the blob, then released its lease, while the mark was in flight); nor does one
    older than the window when the mark completed."""
    async with backend.driver() as store:
        quiet = GCQuiet(store, WINDOW)
        began = time.monotonic()
        await _settled_look(quiet)
        now = time.monotonic()
        assert not quiet.covers(began, now)
        assert quiet.covers(now, now)
        assert not quiet.covers(now, now + WINDOW)


async def test_no_window_always_lists(backend: Backend) -> None:
    async with _replica(backend, window=0) as (c, driver, quiet):
        await _settled_look(quiet)
        driver.reset()
        await push_blob(c, "app", b"listed as ever")
        assert len(_blob_dirs_listed(driver)) == 1
        assert quiet.skipped == 0


async def test_gc_waits_the_window_after_its_lease(backend: Backend) -> None:
    async with _replica(backend) as (c, _driver, _quiet), backend.driver() as store:
        await _garbage(c, b"wait")
        gcd = GatedDriver(store)
        gcd.gate.set()
        report = await gc(gcd, grace_period=0, lease_staleness=1.0)
        assert report.ok and report.blobs_deleted >= 1, report
        assert report.lease_staleness_seconds == 1.0
        waited = gcd.times["tombstone"] - gcd.times[paths.lease(GC_LEASE)]
        assert waited >= 1.0, waited
        with pytest.raises(PathNotFound):  # released: replicas skip listings again
            await store.get(paths.lease(GC_LEASE))


@pytest.mark.parametrize("writer", ["upload", "mount"])
async def test_gc_that_knows_the_window_keeps_what_a_quiet_writer_relies_on(
    backend: Backend, writer: str
) -> None:
    """A replica looked (no GC), then a GC takes its lease and a writer relies on a garbage
    blob without listing: the GC waits out the window, so its re-check sees the writer's mark."""
    async with _replica(backend) as (c, driver, quiet), backend.driver() as store:
        layer, _ = await _garbage(c, b"kept")
        await quiet.look()
        gcd = GatedDriver(store)
        gcd.gate.set()
        run = asyncio.ensure_future(gc(gcd, grace_period=0, lease_staleness=WINDOW))
        await asyncio.sleep(0.3)  # the GC holds its lease and is waiting
        assert await store.get(paths.lease(GC_LEASE))
        driver.reset()
        blob = await _rely(c, writer, layer)  # existing content: reserved, not uploaded
        assert _blob_dirs_listed(driver) == [], "the writer listed: the test shows nothing"
        report = await run
        assert report.ok, report.errors
        assert await _present_in(backend, "other", blob)
        assert await find_problems(store) == []


@pytest.mark.parametrize("writer", ["upload", "mount"])
async def test_control_gc_unaware_of_the_window_loses_a_quiet_writers_blob(
    backend: Backend, writer: str
) -> None:
    """The same, with a GC told nothing of the window: it writes its tombstone and re-checks
    at once, the writer (trusting its look) does not list and is answered 201, then the GC
    removes the blob. This is the hazard the wait exists for (and proves the test above
    exercises it)."""
    async with _replica(backend) as (c, driver, quiet), backend.driver() as store:
        layer, _ = await _garbage(c, b"lost")
        await quiet.look()
        gcd = GatedDriver(store)
        run = asyncio.ensure_future(gc(gcd, grace_period=0, lease_staleness=0.0))
        await asyncio.wait_for(gcd.reached.wait(), 30)  # past its tombstones and re-check
        driver.reset()
        blob = await _rely(c, writer, layer)
        assert _blob_dirs_listed(driver) == []
        gcd.gate.set()
        report = await run
        assert report.blobs_deleted >= 1
        assert not await _present_in(backend, "other", blob)  # 201, yet the content is gone


async def test_a_gc_that_fails_after_its_tombstones_leaves_its_lease_to_expire(
    backend: Backend,
) -> None:
    """Deletes of a run that was stopped may still land: its lease stays (expiring when a
    writer would count its tombstones stale anyway), so writers keep listing meanwhile."""
    async with _replica(backend) as (c, driver, quiet), backend.driver() as store:
        await _garbage(c, b"stopped")
        gcd = GatedDriver(store)
        run = asyncio.ensure_future(
            collect_garbage(gcd, GCOptions(grace_period=0, lease_settle=0.0))
        )
        await asyncio.wait_for(gcd.reached.wait(), 30)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        record = json.loads(await store.get(paths.lease(GC_LEASE)))
        assert 60 < record["expires"] - time.time() <= 120
        await quiet.look()
        driver.reset()
        await push_blob(c, "app", b"while its deletes may land")
        assert len(_blob_dirs_listed(driver)) == 1
