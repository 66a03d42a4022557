"""What pushes ask of storage, on every driver.

* A chunked push of a small blob (POST, PATCH, PUT: what docker, containerd and skopeo send):
  no hash state read before the first byte, and on S3, where the session's bytes travel in the
  writer's state, no hash state written and completion without commit and move.
* A small session in chunks through alternating replicas, growing past the small-blob limit:
  hashed from the held bytes while small, from a saved state after.
* A whole blob in the final PUT or a POST ``?digest=``: written straight to its place and
  committed once verified, without the session's data, hash state or a move.
* Chunks past the small-blob limit: each reads the hash state at its start, saves one at its
  end and deletes nothing; the completion removes the session with every state.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import AsyncIterator

import httpx
import pytest

from berth.app import create_app
from berth.registry.digest import Digest
from berth.registry.uploads import SMALL_BLOB
from berth.storage import paths
from berth.storage.driver import PathNotFound

from .conftest import PART, Backend
from .gc_fixtures import RecordingDriver

MiB = 1024 * 1024


async def test_small_chunked_push(backend: Backend) -> None:
    data = b"a small layer, pushed in one PATCH" * 100
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with backend.driver() as inner:
        driver = RecordingDriver(inner)
        app = create_app(backend.settings(redirect=False), driver=driver)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://r") as c:
            r = await c.post("/v2/app/blobs/uploads/")
            assert r.status_code == 202, r.text
            location = r.headers["Location"]
            driver.reset()
            r = await c.patch(
                location, content=data, headers={"Content-Type": "application/octet-stream"}
            )
            assert r.status_code == 202, r.text
            assert not [k for k in driver.got if "/hashstates/" in k], driver.got
            # Where the writer holds the session's bytes (S3), nothing to resume hashing from
            # is saved either: the next chunk or the completion hashes those bytes.
            upload_id = location.rsplit("/", 1)[1]
            held = (await inner.writer(paths.upload_data("app", upload_id), append=True)).held()
            saved = [k for k in driver.written if "/hashstates/" in k]
            assert (saved == []) == (held is not None), (saved, held is not None)
            r = await c.put(r.headers["Location"], params={"digest": digest})
            assert r.status_code == 201, r.text
            # The S3 writer holds a small session's bytes: stored like a monolithic small blob;
            # the filesystem commits and moves it (one move, counted as copy + delete).
            assert driver.ops["move"] == (2 if backend.kind == "filesystem" else 0), driver.ops
            r = await c.get(f"/v2/app/blobs/{digest}")
            assert r.status_code == 200 and r.content == data


async def test_small_chunks_across_replicas_then_past_the_small_limit(backend: Backend) -> None:
    data = os.urandom(SMALL_BLOB + 300_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    cuts = [0, 100_000, 400_000, 900_000, len(data)]  # the last chunk crosses SMALL_BLOB
    async with backend.driver() as d1, backend.driver() as d2:
        replicas = [await _recorded_app(backend, RecordingDriver(d)) for d in (d1, d2)]
        try:
            location = (await replicas[0].post("/v2/app/blobs/uploads/")).headers["Location"]
            for i, (a, b) in enumerate(itertools.pairwise(cuts)):
                r = await replicas[i % 2].patch(
                    location,
                    content=data[a:b],
                    headers={"Content-Range": f"{a}-{b - 1}"},
                )
                assert r.status_code == 202, r.text
                assert r.headers["Range"] == f"0-{b - 1}"
            r = await replicas[1].put(location, params={"digest": digest})
            assert r.status_code == 201, r.text
            r = await replicas[0].get(f"/v2/app/blobs/{digest}")
            assert r.status_code == 200 and r.content == data
        finally:
            for c in replicas:
                await c.aclose()


async def test_chunks_keep_their_hash_states_until_the_session_ends(backend: Backend) -> None:
    """A chunk saves the hash state at its end and deletes nothing (the state at its start stays,
    as Distribution's do: a request per chunk saved); the completion removes them all."""
    data = os.urandom(3 * SMALL_BLOB)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    cuts = [0, SMALL_BLOB + 10, 2 * SMALL_BLOB, len(data)]
    async with backend.driver() as inner:
        driver = RecordingDriver(inner)
        async with await _recorded_app(backend, driver) as c:
            location = (await c.post("/v2/app/blobs/uploads/")).headers["Location"]
            upload_id = location.rsplit("/", 1)[1]
            states = paths.upload_hashstates("app", upload_id, "sha256")
            for i, (a, b) in enumerate(itertools.pairwise(cuts)):
                driver.reset()
                r = await c.patch(
                    location, content=data[a:b], headers={"Content-Range": f"{a}-{b - 1}"}
                )
                assert r.status_code == 202, r.text
                assert f"{states}/{b}" in driver.written, driver.written
                if i:
                    assert f"{states}/{a}" in driver.got, driver.got
                assert not driver.ops["delete"] and not driver.ops["delete_many"], driver.ops
            assert sorted(await inner.list(states), key=int) == [str(b) for b in cuts[1:]]
            r = await c.put(location, params={"digest": digest})
            assert r.status_code == 201, r.text
            with pytest.raises(PathNotFound):
                await inner.list(paths.upload_dir("app", upload_id))
            r = await c.get(f"/v2/app/blobs/{digest}")
            assert r.status_code == 200 and r.content == data


async def _recorded_app(backend: Backend, driver: RecordingDriver) -> httpx.AsyncClient:
    app = create_app(backend.settings(redirect=False), driver=driver)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r")


async def test_a_whole_blob_in_the_final_put_goes_straight_to_its_place(backend: Backend) -> None:
    """POST, then PUT ?digest= with the whole blob (containerd's push): written where the blob
    lives, committed once verified; no session data, hash state or move (on S3 a copy)."""
    data = os.urandom(PART + 3 * MiB)  # several parts on S3
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with backend.driver() as inner:
        driver = RecordingDriver(inner)
        async with await _recorded_app(backend, driver) as c:
            location = (await c.post("/v2/app/blobs/uploads/")).headers["Location"]
            driver.reset()
            r = await c.put(location, params={"digest": digest}, content=data)
            assert r.status_code == 201, r.text
            assert driver.ops["move"] == 0, driver.ops
            assert not [k for k in driver.written if "/hashstates/" in k or "_uploads" in k]
            assert (await c.get(location)).status_code == 404  # the session is gone
            r = await c.get(f"/v2/app/blobs/{digest}")
            assert r.status_code == 200 and r.content == data
            # POST ?digest= with the whole blob takes the same way.
            other = data[::-1]
            od = "sha256:" + hashlib.sha256(other).hexdigest()
            driver.reset()
            r = await c.post("/v2/app/blobs/uploads/", params={"digest": od}, content=other)
            assert r.status_code == 201, r.text
            assert driver.ops["move"] == 0, driver.ops
            assert (await c.get(f"/v2/app/blobs/{od}")).content == other


async def test_a_whole_blob_that_fails_leaves_nothing_under_its_digest(backend: Backend) -> None:
    """Wrong digest: DIGEST_INVALID and the session ends; an unknown session: 404. A body that
    breaks off: the session stays, empty, and the same PUT again succeeds. Nothing ever
    appears under the digest in between, not even a directory."""
    data = os.urandom(PART + MiB)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()

    async def broken() -> AsyncIterator[bytes]:
        yield data[: PART // 2]
        yield data[PART // 2 : PART + 1000]
        raise ConnectionResetError("client went away")

    async with (
        backend.driver() as driver,
        await _recorded_app(backend, RecordingDriver(driver)) as c,
    ):
        location = (await c.post("/v2/app/blobs/uploads/")).headers["Location"]
        r = await c.put(location, params={"digest": wrong}, content=data)
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "DIGEST_INVALID"
        assert (await c.get(location)).status_code == 404
        unknown = "/v2/app/blobs/uploads/00000000-0000-4000-8000-000000000000"
        r = await c.put(unknown, params={"digest": digest}, content=data)
        assert r.status_code == 404 and r.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
        for d in (digest, wrong):  # no object, and no directory left behind either
            with pytest.raises(PathNotFound):
                await driver.stat(paths.blob_data(Digest.parse(d)))
            with pytest.raises(PathNotFound):
                await driver.list(paths.blob_dir(Digest.parse(d)))

        location = (await c.post("/v2/app/blobs/uploads/")).headers["Location"]
        with pytest.raises(ConnectionResetError):
            await c.put(location, params={"digest": digest}, content=broken())
        assert (await c.head(f"/v2/app/blobs/{digest}")).status_code == 404
        r = await c.get(location)
        assert r.status_code == 204 and r.headers["Range"] == "0-0"
        r = await c.put(location, params={"digest": digest}, content=data)
        assert r.status_code == 201, r.text
        assert (await c.get(f"/v2/app/blobs/{digest}")).content == data
        assert (await driver.stat(paths.blob_data(Digest.parse(digest)))).size == len(data)


async def test_a_whole_blob_with_its_content_range(backend: Backend) -> None:
    """A Content-Range from 0 that agrees with the body takes the straight way; one that
    disagrees is refused (SIZE_INVALID, as for a chunk) and stores nothing."""
    data = os.urandom(PART + MiB)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with backend.driver() as inner:
        driver = RecordingDriver(inner)
        async with await _recorded_app(backend, driver) as c:
            location = (await c.post("/v2/app/blobs/uploads/")).headers["Location"]
            r = await c.put(
                location,
                params={"digest": digest},
                content=data,
                headers={"Content-Range": f"0-{len(data)}"},  # one byte too many
            )
            assert r.status_code == 400 and r.json()["errors"][0]["code"] == "SIZE_INVALID"
            with pytest.raises(PathNotFound):
                await driver.stat(paths.blob_data(Digest.parse(digest)))
            driver.reset()
            r = await c.put(
                location,
                params={"digest": digest},
                content=data,
                headers={"Content-Range": f"0-{len(data) - 1}"},
            )
            assert r.status_code == 201, r.text
            assert driver.ops["move"] == 0, driver.ops
            assert (await c.get(f"/v2/app/blobs/{digest}")).content == data
