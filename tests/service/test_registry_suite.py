"""The registry's storage-dependent behaviour, proven on every driver (filesystem, S3 on moto,
S3 on SeaweedFS): tags of every shape, uploads that fail, resume, lose their hash state or get
two writers at once, status requests that must not write, mounts.

Distribution's ``testsuites`` pattern: each test takes ``backend`` and runs once per driver; it
talks to the registry through HTTP or the registry layer and inspects storage only through a
driver, never through the filesystem.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from berth.registry import _openssl
from berth.registry.digest import Digest
from berth.registry.errors import RangeInvalid
from berth.registry.registry import Registry
from berth.storage import paths
from berth.storage.driver import FileWriter, PathNotFound, StorageDriver, StorageUnavailable

from .conftest import PART, Backend, error_code, push_blob, push_image, sha256

MiB = 1024 * 1024


async def pieces(data: bytes, size: int = MiB) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def patch_in_chunks(
    client: httpx.AsyncClient, location: str, data: bytes, start: int, size: int
) -> None:
    """PATCH ``data[start:]`` in chunks of ``size`` with their Content-Range; each must be 202."""
    for first in range(start, len(data), size):
        last = min(first + size, len(data)) - 1
        r = await client.patch(
            location, content=data[first : last + 1], headers={"Content-Range": f"{first}-{last}"}
        )
        assert r.status_code == 202, r.text


async def _registry(backend: Backend, stack: Any) -> Registry:
    app = await stack.enter_async_context(backend.app(redirect=False))
    reg: Registry = app.state.registry
    return reg


# -- tags ----------------------------------------------------------------------------------------

TAGS = ["123", "2024", "0", "data", "link", "touch", "startedat", "v1.0", "a" * 128]


async def test_tags_of_every_shape_are_deleted(client: httpx.AsyncClient) -> None:
    digest, _ = await push_image(client, "app", tag=None)
    body = (await client.get(f"/v2/app/manifests/{digest}")).content
    media = "application/vnd.oci.image.manifest.v1+json"
    for tag in TAGS:
        r = await client.put(
            f"/v2/app/manifests/{tag}", content=body, headers={"Content-Type": media}
        )
        assert r.status_code == 201, (tag, r.text)
    listed = (await client.get("/v2/app/tags/list")).json()["tags"]
    assert sorted(listed) == sorted(TAGS)
    for tag in TAGS[:4]:
        assert (await client.delete(f"/v2/app/manifests/{tag}")).status_code == 202
        r = await client.get(f"/v2/app/manifests/{tag}")
        assert r.status_code == 404, tag
        assert error_code(r) == "MANIFEST_UNKNOWN"
    assert sorted((await client.get("/v2/app/tags/list")).json()["tags"]) == sorted(TAGS[4:])
    # Deleting the manifest by digest takes every remaining tag with it.
    assert (await client.delete(f"/v2/app/manifests/{digest}")).status_code == 202
    for tag in TAGS:
        assert (await client.get(f"/v2/app/manifests/{tag}")).status_code == 404, tag
    assert (await client.get("/v2/app/tags/list")).json()["tags"] == []


async def test_tag_deleted_twice_is_unknown(client: httpx.AsyncClient) -> None:
    await push_image(client, "app", tag="2024")
    assert (await client.delete("/v2/app/manifests/2024")).status_code == 202
    r = await client.delete("/v2/app/manifests/2024")
    assert r.status_code == 404
    assert error_code(r) == "MANIFEST_UNKNOWN"


# -- uploads -------------------------------------------------------------------------------------


async def test_status_request_writes_nothing(
    client: httpx.AsyncClient, storage: StorageDriver
) -> None:
    r = await client.post("/v2/app/blobs/uploads/")
    location, upload_id = r.headers["Location"], r.headers["Docker-Upload-UUID"]
    before = sorted([i.key async for i in storage.walk(paths.upload_dir("app", upload_id))])
    for _ in range(2):
        r = await client.get(location)
        assert r.status_code == 204
        assert r.headers["Range"] == "0-0"
    after = sorted([i.key async for i in storage.walk(paths.upload_dir("app", upload_id))])
    assert after == before == [paths.upload_started_at("app", upload_id)]


@pytest.mark.parametrize("failed_at", [3 * MiB, PART + 2 * MiB])
async def test_upload_resumes_after_a_client_disconnect(backend: Backend, failed_at: int) -> None:
    """The client goes away mid-chunk; the next request asks where to resume and finishes."""
    data = os.urandom(PART * 2 + 12345)

    async def cut(chunk: bytes) -> AsyncIterator[bytes]:
        async for piece in pieces(chunk):
            yield piece
        raise ConnectionResetError("client went away")

    async with backend.client(redirect=False) as client, contextlib.AsyncExitStack() as stack:
        reg = await _registry(backend, stack)
        session = await reg.uploads.start("app")
        with pytest.raises(ConnectionResetError):
            await reg.uploads.append("app", session.upload_id, cut(data[:failed_at]))
        location = f"/v2/app/blobs/uploads/{session.upload_id}"
        r = await client.get(location)
        assert r.status_code == 204
        offset = int(r.headers["Range"].split("-")[1]) + 1 if r.headers["Range"] != "0-0" else 0
        assert offset <= failed_at
        assert (await client.head(f"/v2/app/blobs/{sha256(data)}")).status_code == 404
        r = await client.patch(
            location,
            content=data[offset:],
            headers={"Content-Range": f"{offset}-{len(data) - 1}"},
        )
        assert r.status_code == 202, r.text
        r = await client.put(location, params={"digest": sha256(data)})
        assert r.status_code == 201, r.text
        assert (await client.get(f"/v2/app/blobs/{sha256(data)}")).content == data


class _FailingWrites:
    """Wrap a driver's ``writer`` so that one write fails as a store outage would."""

    def __init__(self, driver: StorageDriver, fail_after: int) -> None:
        self.fail_after = fail_after  # bytes accepted before the failure (once)
        self.armed = True
        self._writer = driver.writer
        driver.writer = self.writer  # type: ignore[method-assign]

    async def writer(self, key: str, append: bool = False) -> FileWriter:
        inner = await self._writer(key, append)
        original = inner.write
        written = 0

        async def write(data: bytes) -> None:
            nonlocal written
            if self.armed and written + len(data) > self.fail_after:
                self.armed = False
                raise StorageUnavailable("injected: the store went away")
            await original(data)
            written += len(data)

        inner.write = write  # type: ignore[method-assign]
        return inner


@pytest.mark.parametrize("fail_after", [2 * MiB, PART + MiB])
async def test_upload_resumes_after_a_failed_patch(backend: Backend, fail_after: int) -> None:
    """A PATCH fails inside the store (503); the upload continues from what was kept."""
    data = os.urandom(2 * PART + 999)
    async with contextlib.AsyncExitStack() as stack:
        app = await stack.enter_async_context(backend.app(redirect=False))
        transport = httpx.ASGITransport(app=app)
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://r")
        )
        _FailingWrites(app.state.registry.driver, fail_after)
        location = (await client.post("/v2/app/blobs/uploads/")).headers["Location"]
        r = await client.patch(location, content=data[:100], headers={"Content-Range": "0-99"})
        assert r.status_code == 202
        r = await client.patch(
            location,
            content=pieces(data[100:]),  # as a server receives it: in pieces, written as they come
            headers={"Content-Range": f"100-{len(data) - 1}"},
        )
        assert r.status_code == 503, r.text
        r = await client.get(location)
        assert r.status_code == 204
        offset = int(r.headers["Range"].split("-")[1]) + 1
        if backend.kind == "filesystem":
            # Whole buffers before the failure were kept: past the last saved hash state.
            assert 100 < offset <= fail_after + 100
        else:
            # S3 streams the parts a chunk fills and cuts back to the start of the one that
            # failed: the 100 bytes before it, or the first whole part.
            assert offset == (PART if fail_after + 100 >= PART else 100)
        await patch_in_chunks(client, location, data, offset, 3 * MiB)  # several more chunks
        r = await client.put(location, params={"digest": sha256(data)})
        assert r.status_code == 201, r.text
        assert (await client.get(f"/v2/app/blobs/{sha256(data)}")).content == data


async def test_upload_without_saved_hash_states(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where OpenSSL's SHA-256 state API is missing, chunked uploads still verify."""
    monkeypatch.setattr(_openssl, "available", lambda algorithm: False)
    data = os.urandom(PART + 3 * MiB)
    location = (await client.post("/v2/app/blobs/uploads/")).headers["Location"]
    await patch_in_chunks(client, location, data, 0, 2 * MiB)
    r = await client.put(location, params={"digest": sha256(data)})
    assert r.status_code == 201, r.text
    assert (await client.get(f"/v2/app/blobs/{sha256(data)}")).content == data
    location = (await client.post("/v2/app/blobs/uploads/")).headers["Location"]
    await client.patch(location, content=data[: PART + 1])
    r = await client.put(location, params={"digest": sha256(b"other")})
    assert r.status_code == 400
    assert error_code(r) == "DIGEST_INVALID"


async def _first(event: asyncio.Event, task: asyncio.Task[Any]) -> None:
    """Until ``event`` is set or ``task`` ends (a writer that fails never sets its event)."""
    waiter = asyncio.ensure_future(event.wait())
    await asyncio.wait([waiter, task], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()


async def test_two_writers_on_one_session(backend: Backend) -> None:
    """Two replicas get chunks of one session at once: one wins, the other gets 416 and the
    session stays intact (on S3 the loser must not replace the winner's multipart part)."""
    first = os.urandom(PART + MiB)  # S3: one part uploaded, a tail staged
    a_data, b_data = os.urandom(PART + 100), os.urandom(PART + 200)
    a_opened, b_written, a_written = asyncio.Event(), asyncio.Event(), asyncio.Event()
    gate_a, gate_b, gate_a_end = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def body_a() -> AsyncIterator[bytes]:
        a_opened.set()  # the session is open (its state read) before the first byte arrives
        await gate_a.wait()
        async for piece in pieces(a_data):
            yield piece
        a_written.set()
        await gate_a_end.wait()

    async def body_b() -> AsyncIterator[bytes]:
        async for piece in pieces(b_data):
            yield piece
        b_written.set()  # every write before this point has been made (parts uploaded)
        await gate_b.wait()

    async with contextlib.AsyncExitStack() as stack:
        reg_a = await _registry(backend, stack)
        reg_b = await _registry(backend, stack)
        session = await reg_a.uploads.start("app")
        uid = session.upload_id
        await reg_a.uploads.append("app", uid, pieces(first))

        task_a = asyncio.create_task(reg_a.uploads.append("app", uid, body_a()))
        await a_opened.wait()
        task_b = asyncio.create_task(reg_b.uploads.append("app", uid, body_b()))
        await _first(b_written, task_b)
        gate_a.set()
        await _first(a_written, task_a)
        # B saves its progress first, then A: the order in which a replaced part would
        # leave the state naming one writer's part and the store holding the other's.
        gate_b.set()
        await asyncio.wait([task_b], timeout=60)
        gate_a_end.set()
        results = await asyncio.gather(task_a, task_b, return_exceptions=True)
        winners = [i for i, r in enumerate(results) if not isinstance(r, BaseException)]
        assert len(winners) == 1, results
        loser = results[1 - winners[0]]
        assert isinstance(loser, RangeInvalid), loser
        expected = first + (a_data, b_data)[winners[0]]
        assert (await reg_b.uploads.status("app", uid)).offset == len(expected)
        digest = Digest.parse(sha256(expected))
        assert await reg_a.uploads.complete("app", uid, digest) == len(expected)
        got = b"".join([c async for c in reg_b.blobs.open(digest)])
        assert got == expected


async def test_a_chunk_for_a_finished_upload_is_unknown(client: httpx.AsyncClient) -> None:
    data = os.urandom(PART + 10)
    location = (await client.post("/v2/app/blobs/uploads/")).headers["Location"]
    await client.patch(location, content=data)
    assert (await client.put(location, params={"digest": sha256(data)})).status_code == 201
    r = await client.patch(location, content=b"late", headers={"Content-Range": f"{len(data)}-"})
    assert r.status_code in (404, 416)
    r = await client.get(location)
    assert r.status_code == 404
    assert error_code(r) == "BLOB_UPLOAD_UNKNOWN"


async def test_cancelled_session_leaves_nothing(
    client: httpx.AsyncClient, storage: StorageDriver
) -> None:
    location = (await client.post("/v2/app/blobs/uploads/")).headers["Location"]
    await client.patch(location, content=os.urandom(PART + MiB))
    assert (await client.delete(location)).status_code == 204
    assert [i async for i in storage.walk(paths.uploads("app"))] == []
    assert (await client.get(location)).status_code == 404


# -- mounts and blobs ----------------------------------------------------------------------------


async def test_mount_and_unlink(client: httpx.AsyncClient, storage: StorageDriver) -> None:
    digest = await push_blob(client, "src", b"shared layer")
    r = await client.post("/v2/dst/blobs/uploads/", params={"mount": digest, "from": "src"})
    assert r.status_code == 201, r.text
    assert (await client.get(f"/v2/dst/blobs/{digest}")).content == b"shared layer"
    assert (await client.delete(f"/v2/dst/blobs/{digest}")).status_code == 202
    assert (await client.head(f"/v2/dst/blobs/{digest}")).status_code == 404
    assert (await client.head(f"/v2/src/blobs/{digest}")).status_code == 200
    with pytest.raises(PathNotFound):
        await storage.stat(paths.layer_link("dst", Digest.parse(digest)))


# -- caches: bounded staleness across replicas ---------------------------------------------------


@pytest.mark.parametrize("staleness", [0.0, 3.0])
async def test_link_cache_staleness_bound_across_replicas(
    backend: Backend, staleness: float
) -> None:
    """Presence is trusted for ``cache.link_staleness_seconds``: a delete is seen at once by the
    replica that made it and by every other one within the bound; absence is never cached."""
    settings = backend.settings(redirect=False)
    settings.cache.link_staleness_seconds = staleness
    loop = asyncio.get_running_loop()
    async with backend.client(settings) as a, backend.client(settings) as b:
        data = b"cached presence"
        digest = sha256(data)
        assert (await b.head(f"/v2/app/blobs/{digest}")).status_code == 404
        await push_blob(a, "app", data)
        assert (await b.head(f"/v2/app/blobs/{digest}")).status_code == 200  # at once
        manifest, _ = await push_image(a, "app", tag=None)

        seen_at = loop.time()  # b (re)learns both links here
        assert (await b.head(f"/v2/app/blobs/{digest}")).status_code == 200
        assert (await b.head(f"/v2/app/manifests/{manifest}")).status_code == 200
        assert (await a.delete(f"/v2/app/blobs/{digest}")).status_code == 202
        assert (await a.delete(f"/v2/app/manifests/{manifest}")).status_code == 202
        assert (await a.head(f"/v2/app/blobs/{digest}")).status_code == 404  # at once on a
        assert (await a.head(f"/v2/app/manifests/{manifest}")).status_code == 404
        blob_seen = (await b.head(f"/v2/app/blobs/{digest}")).status_code
        manifest_seen = (await b.head(f"/v2/app/manifests/{manifest}")).status_code
        if staleness == 0:
            assert (blob_seen, manifest_seen) == (404, 404)
        elif loop.time() - seen_at < staleness:  # b answers from its cache within the bound
            assert (blob_seen, manifest_seen) == (200, 200)
        await asyncio.sleep(max(0.0, seen_at + staleness - loop.time()) + 0.05)
        assert (await b.head(f"/v2/app/blobs/{digest}")).status_code == 404  # bound kept
        assert (await b.get(f"/v2/app/manifests/{manifest}")).status_code == 404


@pytest.mark.parametrize("reuse", [0.0, 0.25])
async def test_redirect_url_reused_within_its_fraction(backend: Backend, reuse: float) -> None:
    settings = backend.settings(redirect=True, redirect_expiry_seconds=1200)
    settings.cache.redirect_reuse_fraction = reuse
    async with contextlib.AsyncExitStack() as stack:
        app = await stack.enter_async_context(backend.app(settings))
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r")
        )
        driver = app.state.registry.driver
        signed = []
        original = driver.redirect_url

        async def counting(key: str, expires_in: int) -> str | None:
            signed.append(key)
            return await original(key, expires_in)

        driver.redirect_url = counting
        digest = await push_blob(client, "app", b"redirected layer")
        answers = [await client.get(f"/v2/app/blobs/{digest}") for _ in range(3)]
        if backend.kind == "filesystem":  # no object store to redirect to: streamed
            assert [r.status_code for r in answers] == [200] * 3
            return
        assert [r.status_code for r in answers] == [307] * 3
        assert len({r.headers["Location"] for r in answers}) == 1 or reuse == 0
        assert len(signed) == (1 if reuse else 3)
        async with httpx.AsyncClient() as direct:  # the reused URL still works
            assert (
                await direct.get(answers[-1].headers["Location"])
            ).content == b"redirected layer"
