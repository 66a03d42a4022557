"""Reservations reused within cache.reservation_reuse_seconds, on every driver.

A write that relies on a blob reuses this process's recent reservation of it instead of writing
``touch`` and listing again; GC cut-offs subtract the same window (docs/gc.md). These tests
check that the requests really go away, that the window ends, and that a GC run which knows the
window keeps what a reused reservation relies on, while one that does not (the control) loses
it: so the window is what makes the shortcut safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from berth.app import create_app
from berth.config import Settings
from berth.gc.verify import find_problems
from berth.registry.digest import Digest
from berth.storage import paths

from .conftest import Backend, push_blob, push_image
from .gc_fixtures import RecordingDriver, gc, manifest_blobs

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# Past a zero-grace cut-off (1 s slack) at S3's one-second mtime resolution.
PAST_CUTOFF = 2.2


def _settings(backend: Backend, reuse: float) -> Settings:
    base = backend.settings()
    return base.model_copy(
        update={"cache": base.cache.model_copy(update={"reservation_reuse_seconds": reuse})}
    )


@contextlib.asynccontextmanager
async def _replica(
    backend: Backend, reuse: float
) -> AsyncIterator[tuple[httpx.AsyncClient, RecordingDriver]]:
    async with backend.driver() as inner:
        driver = RecordingDriver(inner)
        app = create_app(_settings(backend, reuse), driver=driver)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://r") as c:
            yield c, driver


def _retagged(body: bytes, note: str) -> bytes:
    m = json.loads(body)
    m["annotations"] = {"note": note}
    return json.dumps(m).encode()


async def _put_manifest(c: httpx.AsyncClient, repo: str, tag: str, body: bytes) -> httpx.Response:
    return await c.put(
        f"/v2/{repo}/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST}
    )


async def test_a_manifest_put_within_the_window_writes_no_touch(backend: Backend) -> None:
    async with _replica(backend, reuse=60) as (c, driver):
        _digest, body = await push_image(c, "app", "v1", seed=b"reuse")
        blobs = manifest_blobs(body)
        driver.reset()
        second = _retagged(body, "second")
        r = await _put_manifest(c, "app", "v2", second)
        assert r.status_code == 201, r.text
        assert not [k for k in driver.written if k.endswith("/touch")], driver.written
        # The only blob directory listed is the new manifest's own (its reservation).
        own = hashlib.sha256(second).hexdigest()
        assert [p.rsplit("/", 1)[-1] for p in driver.listed if "/blobs/" in p] == [own]
        # Nothing per referenced blob (reserved, and linked after that, by the uploads): the
        # manifest's content written and listed (its reservation), its revision and tag index
        # entry, then the tag.
        assert len(blobs) == 3 and driver.ops["stat"] == 0, driver.ops
        assert driver.requests == 2 + 2 + 1, driver.ops
        assert (await c.get("/v2/app/manifests/v2")).status_code == 200


@pytest.mark.parametrize(
    ("reuse", "wait"), [(0.0, 0.0), (0.3, 0.4)], ids=["reuse off", "window over"]
)
async def test_otherwise_every_write_reserves(backend: Backend, reuse: float, wait: float) -> None:
    """With reuse off, or once the window is over, each referenced blob is reserved again."""
    async with _replica(backend, reuse=reuse) as (c, driver):
        _digest, body = await push_image(c, "app", "v1", seed=b"again")
        await asyncio.sleep(wait)
        driver.reset()
        r = await _put_manifest(c, "app", "v2", _retagged(body, "second"))
        assert r.status_code == 201, r.text
        touched = [k for k in driver.written if k.endswith("/touch")]
        assert len(touched) == len(manifest_blobs(body)), driver.written


async def test_gc_that_knows_the_window_keeps_what_reuse_relies_on(backend: Backend) -> None:
    """Garbage old enough for a zero-grace GC, but reserved within the window: kept, so a
    re-push that reuses the reservation (no touch, no upload written) stays whole."""
    window = 30.0
    async with _replica(backend, reuse=window) as (c, _driver), backend.driver() as gcd:
        digest, body = await push_image(c, "app", "v1", seed=b"kept")
        assert (await c.delete(f"/v2/app/manifests/{digest}")).status_code == 202
        await asyncio.sleep(PAST_CUTOFF)
        report = await gc(gcd, grace_period=0, reservation_reuse=window)
        assert report.ok and report.blobs_deleted == 0, report
        assert report.reservation_reuse_seconds == window
        for blob_data in (b"kept" + b"layer" + bytes([0]) * 100,):
            await push_blob(c, "other", blob_data)  # upload of existing content: reused
        assert await push_image(c, "app", "v1", seed=b"kept") == (digest, body)
        assert (await c.get(f"/v2/app/manifests/{digest}")).status_code == 200
        for blob in manifest_blobs(body):
            assert (await c.head(f"/v2/app/blobs/{blob}")).status_code == 200
        assert await find_problems(gcd) == []


async def test_control_gc_unaware_of_the_window_loses_a_reused_blob(backend: Backend) -> None:
    """The same, with a GC told nothing of the window: it removes the blobs, and the replica's
    reused reservation then links an upload of that content to nothing. This is the hazard
    the cut-off's window exists for (and proves the test above exercises it)."""
    async with _replica(backend, reuse=30.0) as (c, _driver), backend.driver() as gcd:
        layer = b"lost" + b"layer" + bytes([0]) * 100
        digest, _body = await push_image(c, "app", "v1", seed=b"lost", layers=1)
        assert (await c.delete(f"/v2/app/manifests/{digest}")).status_code == 202
        await asyncio.sleep(PAST_CUTOFF)
        report = await gc(gcd, grace_period=0, reservation_reuse=0)
        assert report.blobs_deleted >= 1
        blob = await push_blob(c, "other", layer)  # accepted on the stale reservation
        async with _replica(backend, reuse=0) as (fresh, _):  # no cache: what storage holds
            # The push answered 201, yet the content is gone.
            assert (await fresh.head(f"/v2/other/blobs/{blob}")).status_code == 404


async def test_a_link_seen_before_the_reservation_is_read_again(backend: Backend) -> None:
    """A replica saw the link; then GC removed blob and link, and someone pushed the blob again
    elsewhere. The reservation finds the blob present, so only a link read after it can tell
    the repository no longer has it (found by the randomised GC rounds). Reuse is off: a GC
    knowing a window would not have removed a blob reserved within it."""
    async with _replica(backend, reuse=0) as (c, _driver), backend.driver() as store:
        layer = b"seen before" * 10
        blob = await push_blob(c, "app", layer)
        assert (await c.head(f"/v2/app/blobs/{blob}")).status_code == 200  # link cached
        # What a GC unit does to an unreferenced blob (links first, then the directory).
        d = Digest.parse(blob)
        await store.delete(paths.layer_link("app", d))
        await store.delete_tree(paths.blob_dir(d))
        async with _replica(backend, reuse=0) as (other, _):
            await push_blob(other, "other", layer)  # back in storage, linked to "other" only
        _cd, body = await push_image(c, "app", "v1", seed=b"x", layers=1)
        m = json.loads(body)
        m["layers"][0].update(digest=blob, size=len(layer))
        r = await _put_manifest(c, "app", "v2", json.dumps(m).encode())
        assert r.status_code == 400, r.text
        assert r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
