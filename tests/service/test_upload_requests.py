"""What a chunked push of a small blob (POST, PATCH, PUT: what docker, containerd and skopeo
send) asks of storage, on every driver: no hash state read before the first byte, and on S3,
where the session's bytes travel in the writer's state, completion without commit and move."""

from __future__ import annotations

import hashlib

import httpx

from berth.app import create_app

from .conftest import Backend
from .gc_fixtures import RecordingDriver


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
            r = await c.put(r.headers["Location"], params={"digest": digest})
            assert r.status_code == 201, r.text
            # The S3 writer holds a small session's bytes: stored like a monolithic small blob;
            # the filesystem commits and moves it (one move, counted as copy + delete).
            assert driver.ops["move"] == (2 if backend.kind == "filesystem" else 0), driver.ops
            r = await c.get(f"/v2/app/blobs/{digest}")
            assert r.status_code == 200 and r.content == data
