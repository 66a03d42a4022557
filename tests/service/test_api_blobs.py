"""Blob uploads and downloads through the ASGI app, as the OCI distribution spec describes."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest

from berth.registry.digest import Digest
from berth.storage import paths
from berth.storage.driver import PathNotFound, StorageDriver

from .conftest import Backend, error_code, push_blob, sha256


async def stored_blob(storage: StorageDriver, digest: str) -> bytes | None:
    try:
        return await storage.get(paths.blob_data(Digest.parse(digest)))
    except PathNotFound:
        return None


async def no_sessions(storage: StorageDriver, name: str) -> bool:
    return [i async for i in storage.walk(paths.uploads(name))] == []


async def test_version_check(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/")
    assert r.status_code == 200
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_monolithic_post_stores_blob_and_link(
    client: httpx.AsyncClient, storage: StorageDriver
) -> None:
    data = os.urandom(3000)
    digest = await push_blob(client, "lib/app", data)
    assert await stored_blob(storage, digest) == data
    link = await storage.get(paths.layer_link("lib/app", Digest.parse(digest)))
    assert link.decode() == digest

    head = await client.head(f"/v2/lib/app/blobs/{digest}")
    assert head.status_code == 200
    assert head.headers["Content-Length"] == "3000"
    assert head.headers["Docker-Content-Digest"] == digest
    assert head.headers["ETag"] == f'"{digest}"'
    assert head.content == b""
    get = await client.get(f"/v2/lib/app/blobs/{digest}")
    assert get.status_code == 200
    assert get.content == data


async def test_streamed_patch_then_put(client: httpx.AsyncClient) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    r = await client.post("/v2/app/blobs/uploads/")
    assert r.status_code == 202
    assert r.headers["Range"] == "0-0"
    location = r.headers["Location"]
    assert r.headers["Docker-Upload-UUID"] in location

    async def body():  # type: ignore[no-untyped-def]
        for i in range(0, len(data), 100_000):
            yield data[i : i + 100_000]

    r = await client.patch(location, content=body())
    assert r.status_code == 202
    assert r.headers["Range"] == f"0-{len(data) - 1}"
    r = await client.put(location, params={"digest": sha256(data)})
    assert r.status_code == 201
    assert r.headers["Location"] == f"/v2/app/blobs/{sha256(data)}"
    assert (await client.get(f"/v2/app/blobs/{sha256(data)}")).content == data


async def test_chunked_upload_with_content_range_and_final_chunk(
    client: httpx.AsyncClient,
) -> None:
    data = os.urandom(250_000)
    chunks = [data[:100_000], data[100_000:200_000], data[200_000:]]
    location = (await client.post("/v2/app/blobs/uploads/")).headers["Location"]
    offset = 0
    for chunk in chunks[:2]:
        r = await client.patch(
            location,
            content=chunk,
            headers={"Content-Range": f"{offset}-{offset + len(chunk) - 1}"},
        )
        assert r.status_code == 202, r.text
        offset += len(chunk)
        assert r.headers["Range"] == f"0-{offset - 1}"
        location = r.headers["Location"]

    status = await client.get(location)
    assert status.status_code == 204
    assert status.headers["Range"] == f"0-{offset - 1}"

    r = await client.put(
        location,
        params={"digest": sha256(data)},
        content=chunks[2],
        headers={"Content-Range": f"{offset}-{len(data) - 1}"},
    )
    assert r.status_code == 201, r.text
    assert (await client.get(f"/v2/app/blobs/{sha256(data)}")).content == data
    # The session is gone once the blob is committed.
    assert (await client.get(location)).status_code == 404


async def test_out_of_order_chunk_is_416_with_current_range(client: httpx.AsyncClient) -> None:
    location = (await client.post("/v2/app/blobs/uploads/")).headers["Location"]
    await client.patch(location, content=b"a" * 10, headers={"Content-Range": "0-9"})
    r = await client.patch(location, content=b"b" * 10, headers={"Content-Range": "20-29"})
    assert r.status_code == 416
    assert error_code(r) == "RANGE_INVALID"
    assert r.headers["Range"] == "0-9"
    # The upload is intact and continues from the right place.
    r = await client.patch(location, content=b"c" * 5, headers={"Content-Range": "10-14"})
    assert r.status_code == 202
    assert r.headers["Range"] == "0-14"


async def test_digest_mismatch_stores_nothing(
    client: httpx.AsyncClient, storage: StorageDriver
) -> None:
    wrong = sha256(b"something else")
    r = await client.post("/v2/app/blobs/uploads/", params={"digest": wrong}, content=b"payload")
    assert r.status_code == 400
    assert error_code(r) == "DIGEST_INVALID"
    assert await stored_blob(storage, wrong) is None
    assert await stored_blob(storage, sha256(b"payload")) is None
    assert (await client.head(f"/v2/app/blobs/{wrong}")).status_code == 404
    assert await no_sessions(storage, "app")


async def test_sha512_digest(client: httpx.AsyncClient, storage: StorageDriver) -> None:
    data = os.urandom(5000)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    location = (await client.post("/v2/app/blobs/uploads/")).headers["Location"]
    await client.patch(location, content=data[:2000])
    r = await client.put(location, params={"digest": digest}, content=data[2000:])
    assert r.status_code == 201, r.text
    assert await stored_blob(storage, digest) == data
    r = await client.get(f"/v2/app/blobs/{digest}")
    assert r.content == data
    assert r.headers["Docker-Content-Digest"] == digest


async def test_cancel_upload(client: httpx.AsyncClient) -> None:
    location = (await client.post("/v2/app/blobs/uploads/")).headers["Location"]
    await client.patch(location, content=b"partial")
    assert (await client.delete(location)).status_code == 204
    r = await client.get(location)
    assert r.status_code == 404
    assert error_code(r) == "BLOB_UPLOAD_UNKNOWN"


async def test_put_without_digest_is_digest_invalid(client: httpx.AsyncClient) -> None:
    location = (await client.post("/v2/app/blobs/uploads/")).headers["Location"]
    r = await client.put(location, content=b"x")
    assert r.status_code == 400
    assert error_code(r) == "DIGEST_INVALID"


async def test_cross_repository_mount(client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, "source/repo", b"shared layer")
    r = await client.post(
        "/v2/target/blobs/uploads/", params={"mount": digest, "from": "source/repo"}
    )
    assert r.status_code == 201
    assert r.headers["Location"] == f"/v2/target/blobs/{digest}"
    assert r.headers["Docker-Content-Digest"] == digest
    assert (await client.get(f"/v2/target/blobs/{digest}")).content == b"shared layer"


async def test_mount_from_repository_without_blob_opens_session(client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, "source/repo", b"only here")
    r = await client.post("/v2/target/blobs/uploads/", params={"mount": digest, "from": "other"})
    assert r.status_code == 202
    assert "/v2/target/blobs/uploads/" in r.headers["Location"]
    assert (await client.head(f"/v2/target/blobs/{digest}")).status_code == 404


async def test_automatic_mount_without_from(client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, "source/repo", b"known content")
    r = await client.post("/v2/target/blobs/uploads/", params={"mount": digest})
    assert r.status_code == 201
    unknown = sha256(b"never uploaded")
    r = await client.post("/v2/target/blobs/uploads/", params={"mount": unknown})
    assert r.status_code == 202


async def test_blob_is_scoped_to_its_repository(client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, "a", b"private to a")
    r = await client.get(f"/v2/b/blobs/{digest}")
    assert r.status_code == 404
    assert error_code(r) == "BLOB_UNKNOWN"


async def test_range_requests(client: httpx.AsyncClient) -> None:
    data = bytes(range(256)) * 40
    digest = await push_blob(client, "app", data)
    url = f"/v2/app/blobs/{digest}"
    r = await client.get(url, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206
    assert r.content == data[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    r = await client.get(url, headers={"Range": "bytes=-5"})
    assert r.status_code == 206 and r.content == data[-5:]
    r = await client.get(url, headers={"Range": "bytes=10000-"})
    assert r.status_code == 206 and r.content == data[10000:]
    r = await client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert r.status_code == 416
    assert r.headers["Content-Range"] == f"bytes */{len(data)}"


async def test_delete_blob_unlinks_it(client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, "app", b"to delete")
    r = await client.delete(f"/v2/app/blobs/{digest}")
    assert r.status_code == 202
    assert (await client.head(f"/v2/app/blobs/{digest}")).status_code == 404
    r = await client.delete(f"/v2/app/blobs/{digest}")
    assert r.status_code == 404
    assert error_code(r) == "BLOB_UNKNOWN"


async def test_delete_disabled_is_unsupported(backend: Backend) -> None:
    async with backend.client(delete_enabled=False) as client:
        digest = await push_blob(client, "app", b"kept")
        r = await client.delete(f"/v2/app/blobs/{digest}")
        assert r.status_code == 405
        assert error_code(r) == "UNSUPPORTED"
        assert (await client.head(f"/v2/app/blobs/{digest}")).status_code == 200


async def test_read_only_refuses_writes_but_serves_reads(backend: Backend) -> None:
    async with backend.client() as client:
        digest = await push_blob(client, "app", b"before read-only")
    async with backend.client(read_only=True, redirect=False) as client:
        r = await client.post("/v2/app/blobs/uploads/")
        assert r.status_code == 405
        assert error_code(r) == "UNSUPPORTED"
        assert "read-only" in r.json()["errors"][0]["message"]
        assert (await client.get(f"/v2/app/blobs/{digest}")).content == b"before read-only"


@pytest.mark.parametrize("size", [2_500_000, 12_000_000])  # S3: below and above one part
async def test_upload_resumes_in_another_process(backend: Backend, size: int) -> None:
    """Upload state lives in storage: a second app (another replica) continues the upload."""
    data = os.urandom(size)
    async with backend.client(redirect=False) as c0, backend.client(redirect=False) as c1:
        clients = [c0, c1]
        location = (await clients[0].post("/v2/app/blobs/uploads/")).headers["Location"]
        r = await clients[0].patch(
            location, content=data[:1_000_000], headers={"Content-Range": "0-999999"}
        )
        assert r.status_code == 202
        r = await clients[1].patch(
            location,
            content=data[1_000_000:],
            headers={"Content-Range": f"1000000-{len(data) - 1}"},
        )
        assert r.status_code == 202
        r = await clients[0].put(location, params={"digest": sha256(data)})
        assert r.status_code == 201, r.text
        assert (await clients[1].get(f"/v2/app/blobs/{sha256(data)}")).content == data


async def test_upload_survives_lost_hash_state(
    client: httpx.AsyncClient, storage: StorageDriver
) -> None:
    """If the saved hash state is missing (crash mid-chunk), the digest is recomputed from data."""
    data = os.urandom(7_000_000)
    location = (await client.post("/v2/app/blobs/uploads/")).headers["Location"]
    # Past the small-blob limit: a small session's writer may hold its bytes, then no state
    # is saved (test_upload_requests.py).
    await client.patch(location, content=data[:1_100_000])
    upload_id = location.rsplit("/", 1)[1]
    states = paths.upload_hashstates("app", upload_id, "sha256")
    assert await storage.list(states)
    await storage.delete_tree(states)
    r = await client.patch(location, content=data[1_100_000:6_000_000])
    assert r.status_code == 202, r.text
    r = await client.patch(location, content=data[6_000_000:])
    assert r.status_code == 202, r.text
    r = await client.put(location, params={"digest": sha256(data)})
    assert r.status_code == 201, r.text
    assert (await client.get(f"/v2/app/blobs/{sha256(data)}")).content == data


async def test_small_blob_needs_no_session_storage(
    client: httpx.AsyncClient, storage: StorageDriver
) -> None:
    """A whole small blob (POST ?digest=, or POST then PUT with the body) is stored directly."""
    digest = await push_blob(client, "app", b"small config")
    location = (await client.post("/v2/app/blobs/uploads/")).headers["Location"]
    r = await client.put(location, params={"digest": sha256(b"tiny layer")}, content=b"tiny layer")
    assert r.status_code == 201
    for d, data in ((digest, b"small config"), (sha256(b"tiny layer"), b"tiny layer")):
        assert await stored_blob(storage, d) == data
    assert await no_sessions(storage, "app")


async def test_final_put_after_chunks_appends_to_the_session(client: httpx.AsyncClient) -> None:
    """A small final PUT body after PATCHed chunks is the last chunk, not the whole blob."""
    data = os.urandom(40_000)
    location = (await client.post("/v2/app/blobs/uploads/")).headers["Location"]
    await client.patch(location, content=data[:30_000])
    r = await client.put(location, params={"digest": sha256(data)}, content=data[30_000:])
    assert r.status_code == 201, r.text
    assert (await client.get(f"/v2/app/blobs/{sha256(data)}")).content == data
    # The final chunk alone matching the digest is not enough: the session held more.
    location = (await client.post("/v2/app/blobs/uploads/")).headers["Location"]
    await client.patch(location, content=b"leading bytes")
    r = await client.put(location, params={"digest": sha256(b"tail")}, content=b"tail")
    assert r.status_code == 400
    assert error_code(r) == "DIGEST_INVALID"
