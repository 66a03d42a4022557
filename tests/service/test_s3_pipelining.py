"""Pipelined part uploads of the S3 writer (storage/s3/writer.py), on moto and on SeaweedFS,
each behind a ``FaultProxy`` that slows or fails chosen part uploads.

* parts finish out of order and still land under their positions, ETags recorded in order;
* a part failing in the middle of a pipeline puts its bytes (and the later parts') back, so
  what ``close`` persists is contiguous and the upload resumes and completes;
* a cancelled ``write`` (client gone) leaves a state a new writer continues from;
* the per-process budget bounds the bytes held by parts uploading in the background;
* a writer adding parts to an upload another writer started streams them under a claim it
  renews while its parts upload: a paused client keeps the session, a dead writer's claim
  expires, and a writer whose claim was taken or went stale stops its part before it lands.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from berth.config import S3Settings
from berth.storage.driver import PathNotFound, StorageRefused, StorageUnavailable, WriterBusy
from berth.storage.s3.writer import STATE_SUFFIX, WriterState

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import s3_servers

MiB = 1024 * 1024
PART = 5 * MiB  # the S3 minimum
PART_NUMBER = re.compile(r"[?&]partNumber=(\d+)")


def _part_number(method: str, target: str) -> int | None:
    if method != "PUT":
        return None
    m = PART_NUMBER.search(target)
    return int(m.group(1)) if m else None


@pytest.fixture(params=["moto", "seaweedfs"])
def server(request: pytest.FixtureRequest) -> s3_servers.S3Server:
    return request.getfixturevalue(f"{request.param}_server")  # type: ignore[no-any-return]


@pytest.fixture
def proxy(server: s3_servers.S3Server) -> Iterator[s3_servers.FaultProxy]:
    p = s3_servers.FaultProxy(server.endpoint)
    yield p
    p.stop()


async def _driver(server: s3_servers.S3Server, proxy: s3_servers.FaultProxy, **kw: Any) -> Any:
    from berth.storage.s3 import S3Driver

    settings: dict[str, Any] = {
        "root_directory": f"p-{uuid.uuid4().hex[:12]}",
        "part_size": PART,
        "endpoint_url": proxy.endpoint,
        "max_attempts": 2,
        "read_timeout": 20.0,
    }
    settings.update(kw)
    d = S3Driver(S3Settings(**server.settings(**settings)))
    await d.start()
    return d


@pytest.fixture
async def driver(
    server: s3_servers.S3Server, proxy: s3_servers.FaultProxy, no_ca_bundle: None
) -> AsyncIterator[Any]:
    d = await _driver(server, proxy, parts_in_flight=2, part_buffer_budget=64)
    yield d
    await d.close()


async def _write(w: Any, data: bytes, step: int = MiB) -> None:
    for i in range(0, len(data), step):
        await w.write(data[i : i + step])


async def _parts(d: Any, key: str) -> list[int]:
    """Sizes of the parts the store holds for the writer's multipart upload."""
    full = d.full_key(key)
    uploads = await (await d.botocore()).list_multipart_uploads(Bucket=d.bucket, Prefix=full)
    (upload,) = uploads["Uploads"]
    parts = await (await d.botocore()).list_parts(
        Bucket=d.bucket, Key=full, UploadId=upload["UploadId"]
    )
    return [p["Size"] for p in parts.get("Parts", [])]


def _held(writers: list[Any]) -> int:
    """Bytes of content the writers hold in memory: their buffers and the parts in flight."""
    return sum(len(w._buffer) + sum(len(p.body) for p in w._inflight) for w in writers)


def _refuse_once(number: int, delay: float = 0.0) -> tuple[Any, list[int]]:
    """A proxy rule refusing part ``number`` once (403: not retried), delaying other parts."""
    refused: list[int] = []

    def rule(method: str, target: str) -> Any:
        n = _part_number(method, target)
        if n == number and not refused:
            refused.append(n)
            return ("status", 403, s3_servers.error_body("AccessDenied"))
        return ("delay", delay) if n is not None and delay else None

    return rule, refused


async def test_parts_land_in_order_when_they_finish_out_of_order(
    driver: Any, proxy: s3_servers.FaultProxy
) -> None:
    # Odd parts are slow: part 2 finishes before part 1, part 4 before part 3.
    def rule(method: str, target: str) -> Any:
        n = _part_number(method, target)
        return None if n is None else ("delay", 0.8 if n % 2 else 0.05)

    proxy.rule = rule
    key = "r/_uploads/order/data"
    data = os.urandom(4 * PART + 123_456)
    w = await driver.writer(key, append=True)
    returned_early = False
    for i in range(0, len(data), MiB):
        await w.write(data[i : i + MiB])
        returned_early = returned_early or bool(w._inflight)
    assert returned_early  # write returned while a part was still uploading
    assert len(w._inflight) <= 2  # parts_in_flight
    await w.close()
    assert driver.part_budget.held == 0
    assert driver.part_budget.peak >= 2 * PART  # two parts were held in flight at once
    assert await _parts(driver, key) == [PART] * 4
    w = await driver.writer(key, append=True)
    assert w.size == len(data)
    assert len(w._state.etags) == 4
    proxy.clear()
    await w.commit()
    assert await driver.get(key) == data


async def test_failed_part_in_the_middle_keeps_the_state_contiguous(
    driver: Any, proxy: s3_servers.FaultProxy
) -> None:
    # Part 2 is refused once (403: not retried) while part 3 uploads behind it.
    rule, failed = _refuse_once(2, delay=0.3)
    proxy.rule = rule
    key = "r/_uploads/fail/data"
    data = os.urandom(6 * PART + 777)
    w = await driver.writer(key, append=True)
    written = 0
    with pytest.raises(StorageRefused):
        try:
            for i in range(0, len(data), MiB):
                piece = data[i : i + MiB]
                written += len(piece)  # a failing write keeps its bytes too
                await w.write(piece)
        finally:
            await w.close()  # as the registry does; persists, raises what write did not
    assert failed == [2]
    assert driver.part_budget.held == 0
    w = await driver.writer(key, append=True)
    assert w.size == written  # every byte written, nothing twice, nothing lost
    assert len(w._state.etags) == 1  # part 1 only: the parts after the failed one went back
    assert w._state.tail_size == written - PART
    await _write(w, data[written:])  # the upload resumes where it stopped
    await w.close()
    w = await driver.writer(key, append=True)
    assert w.size == len(data)
    await w.commit()
    assert await driver.get(key) == data


async def test_commit_after_a_failure_sends_equal_parts(
    driver: Any, proxy: s3_servers.FaultProxy
) -> None:
    """A failure leaves a tail longer than a part; commit splits it into whole parts (equal
    sizes, as R2 requires) and a last one, and a refused part in commit completes nothing."""
    key = "r/_uploads/commit/data"
    data = os.urandom(3 * PART + 4096)
    proxy.rule, refused = _refuse_once(2)
    w = await driver.writer(key, append=True)
    written = 0
    with pytest.raises(StorageRefused):
        try:
            for i in range(0, len(data), MiB):
                written += len(data[i : i + MiB])
                await w.write(data[i : i + MiB])
        finally:
            await w.close()
    assert refused == [2]
    w = await driver.writer(key, append=True)
    assert w.size == written and w._state.tail_size == written - PART > PART
    proxy.rule, refused = _refuse_once(3)
    with pytest.raises(StorageRefused):
        await w.commit()
    with pytest.raises(PathNotFound):
        await driver.stat(key)  # nothing completed
    proxy.clear()
    w = await driver.writer(key, append=True)
    assert w.size == written  # the state is what the last close persisted
    sent: list[tuple[int, int]] = []
    upload = w._upload_part

    async def spy(number: int, body: bytes | bytearray) -> str:
        sent.append((number, len(body)))
        return await upload(number, body)

    w._upload_part = spy
    await w.commit()
    tail = written - PART
    assert sorted(sent) == [(2, PART), (3, tail - PART)]
    assert await driver.get(key) == data[:written]
    assert driver.part_budget.held == 0


async def test_cancelled_write_leaves_a_consistent_state(
    driver: Any, proxy: s3_servers.FaultProxy
) -> None:
    proxy.rule = lambda method, target: ("delay", 1.0) if _part_number(method, target) else None
    key = "r/_uploads/gone/data"
    data = os.urandom(5 * PART)
    w = await driver.writer(key, append=True)
    progress = [0]
    far_enough = asyncio.Event()  # parts in flight, the writer about to wait for room

    async def client() -> None:
        for i in range(0, len(data), MiB):
            await w.write(data[i : i + MiB])
            progress[0] = i + MiB
            if progress[0] >= 3 * PART:
                far_enough.set()

    task = asyncio.create_task(client())
    await far_enough.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await w.close()  # as the registry does when the client goes away
    assert driver.part_budget.held == 0
    w = await driver.writer(key, append=True)
    assert w.size >= progress[0]
    size = w.size
    proxy.clear()
    await _write(w, data[size:])
    await w.commit()
    assert await driver.get(key) == data


async def test_budget_bounds_the_bytes_held(
    server: s3_servers.S3Server, proxy: s3_servers.FaultProxy, no_ca_bundle: None
) -> None:
    """Eight writers at once with a budget of two parts: at most two parts wait in the
    background over all of them; each writer holds at most its buffer besides."""
    proxy.rule = lambda method, target: ("delay", 0.2) if _part_number(method, target) else None
    budget_parts = 2
    d = await _driver(server, proxy, parts_in_flight=2, part_buffer_budget=budget_parts * 5)
    try:
        blobs = [os.urandom(3 * PART + 1000) for _ in range(8)]
        writers = [await d.writer(f"r/_uploads/b{i}/data", append=True) for i in range(8)]
        most = [0]
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                most[0] = max(most[0], _held(writers))
                assert d.part_budget.held <= budget_parts * PART
                await asyncio.sleep(0.005)

        sampler = asyncio.create_task(sample())
        await asyncio.gather(*(_write(w, b) for w, b in zip(writers, blobs, strict=True)))
        await asyncio.gather(*(w.close() for w in writers))
        done.set()
        await sampler
        # Each writer: less than one part plus one write in its buffer, or one part waited for
        # (unbudgeted); over all of them, at most the budget in the background.
        assert most[0] <= 8 * (PART + MiB) + budget_parts * PART
        assert d.part_budget.peak <= budget_parts * PART
        assert d.part_budget.held == 0
        for i, blob in enumerate(blobs):
            w = await d.writer(f"r/_uploads/b{i}/data", append=True)
            await w.commit()
            assert await d.get(f"r/_uploads/b{i}/data") == blob
    finally:
        await d.close()


async def test_no_budget_means_no_pipelining(
    server: s3_servers.S3Server, proxy: s3_servers.FaultProxy, no_ca_bundle: None
) -> None:
    d = await _driver(server, proxy, part_buffer_budget=0)
    try:
        w = await d.writer("r/_uploads/sync/data", append=True)
        data = os.urandom(2 * PART + 5)
        for i in range(0, len(data), MiB):
            await w.write(data[i : i + MiB])
            assert not w._inflight  # every part uploaded before write returned
        await w.commit()
        assert await d.get("r/_uploads/sync/data") == data
        assert d.part_budget.peak == 0
    finally:
        await d.close()


# -- streamed parts: after ``expect`` the parts a request fills go out as its bytes arrive ------


async def _reopen(d: Any, key: str) -> Any:
    return await d.writer(key, append=True)


@pytest.mark.parametrize("fast_path", [True, False], ids=["lean", "botocore"])
async def test_streamed_parts_are_not_gathered(
    server: s3_servers.S3Server,
    proxy: s3_servers.FaultProxy,
    no_ca_bundle: None,
    fast_path: bool,
) -> None:
    """An earlier request left 100 bytes; the next one says how much is coming: its parts
    (the first starting with those 100 bytes) are equal, and the lean client holds only the
    last partial part's bytes in the writer (botocore gathers each part to sign it)."""
    d = await _driver(server, proxy, fast_path=fast_path)
    key = "r/_uploads/stream/data"
    data = os.urandom(3 * PART + 5000)
    try:
        w = await d.writer(key, append=True)
        await w.write(data[:100])
        await w.close()
        w = await _reopen(d, key)
        w.expect(len(data) - 100)
        most = 0
        for i in range(100, len(data), MiB):
            await w.write(data[i : i + MiB])
            most = max(most, _held([w]) - 100)  # the first part's start stays until recorded
        await w.close()
        if fast_path:
            assert most <= 5000  # the tail after the last whole part
        assert d.part_budget.peak == 0  # nothing gathered for the background
        assert await _parts(d, key) == [PART] * 3
        w = await _reopen(d, key)
        assert w.size == len(data)
        await w.commit()
        assert await d.get(key) == data
    finally:
        await d.close()


async def test_a_failed_streamed_part_cuts_back_to_its_start(
    driver: Any, proxy: s3_servers.FaultProxy
) -> None:
    """Its bytes are not kept, so the content ends where it began; the upload resumes there."""
    proxy.rule, refused = _refuse_once(2)
    key = "r/_uploads/streamfail/data"
    data = os.urandom(3 * PART + 777)
    w = await driver.writer(key, append=True)
    w.expect(len(data))
    with pytest.raises(StorageRefused):
        try:
            await _write(w, data)
        finally:
            await w.close()
    assert refused == [2]
    w = await _reopen(driver, key)
    assert w.size == PART  # part 1 recorded; part 2's bytes gone
    w.expect(len(data) - PART)
    await _write(w, data[PART:])
    await w.close()
    w = await _reopen(driver, key)
    await w.commit()
    assert await driver.get(key) == data


@pytest.mark.parametrize("before", [0, 100])
async def test_a_writer_closed_mid_stream_keeps_the_parts_before(
    driver: Any, proxy: s3_servers.FaultProxy, before: int
) -> None:
    """The client went away in the middle of a part: ``close`` stops that part's upload
    without an error and persists what came before it (whole parts, and the bytes an earlier
    request left); nothing of the unfinished part is kept."""
    key = f"r/_uploads/gone{before}/data"
    data = os.urandom(3 * PART)
    w = await driver.writer(key, append=True)
    if before:
        await w.write(data[:before])
        await w.close()
        w = await _reopen(driver, key)
    w.expect(len(data) - before)
    await _write(w, data[before : before + PART + PART // 2])  # part 1 and half of part 2
    await w.close()
    assert driver.part_budget.held == 0
    w = await _reopen(driver, key)
    assert w.size == PART
    await _write(w, data[PART:])
    await w.commit()
    assert await driver.get(key) == data


async def test_a_short_stream_fails_commit_and_keeps_the_state(
    driver: Any, proxy: s3_servers.FaultProxy
) -> None:
    key = "r/_uploads/short/data"
    data = os.urandom(2 * PART)
    w = await driver.writer(key, append=True)
    w.expect(len(data))
    await _write(w, data[: PART + MiB])
    with pytest.raises(StorageUnavailable):
        await w.commit()
    with pytest.raises(PathNotFound):
        await driver.get(key)


async def test_the_lean_client_uploads_without_botocore(driver: Any) -> None:
    """Multipart uploads (gathered and streamed parts, completion, abort) and the health check
    go through the lean client: a worker that only serves pushes and pulls never loads
    botocore's client (its service model costs each worker about 11 MiB)."""
    data = os.urandom(2 * PART + 10)
    w = await driver.writer("r/_uploads/lean/data", append=True)
    await _write(w, data[:PART])  # gathered
    w.expect(len(data) - PART)
    await _write(w, data[PART:])  # streamed
    await w.close()
    w = await driver.writer("r/_uploads/lean/data", append=True)
    await w.commit()
    w = await driver.writer("r/_uploads/gone/data", append=True)
    await _write(w, data)
    await w.cancel()  # aborts its multipart upload
    await driver.ping()
    assert await driver.get("r/_uploads/lean/data") == data
    assert driver._client is None
    full = driver.full_key("r/_uploads/")
    left = await (await driver.botocore()).list_multipart_uploads(Bucket=driver.bucket, Prefix=full)
    assert not left.get("Uploads")  # committed and aborted: none in progress


# -- claims: adding parts to a multipart upload another writer started ---------------------------


async def _continuing(d: Any, key: str, data: bytes, expect: int = PART) -> Any:
    """An earlier request started the multipart upload (one whole part and 10 bytes); a writer
    continuing it, told ``expect`` bytes are coming, has streamed the first MiB of part 2."""
    w = await d.writer(key, append=True)
    w.expect(PART + 10)
    await _write(w, data[: PART + 10])
    await w.close()
    w = await d.writer(key, append=True)
    w.expect(expect)
    await w.write(data[PART + 10 : PART + 10 + MiB])
    return w


async def _stored_state(d: Any, key: str) -> tuple[WriterState, bytes | None]:
    return WriterState.from_bytes(await d.get_full(d.full_key(key) + STATE_SUFFIX))


async def test_a_writer_continuing_anothers_upload_streams_under_its_claim(driver: Any) -> None:
    """Its part goes out as the bytes arrive, under a claim taken before the part starts:
    another writer on the session is refused while it streams, then continues after it."""
    key = "r/_uploads/cont/data"
    data = os.urandom(3 * PART)
    w = await _continuing(driver, key, data, expect=2 * PART - 10)
    assert w._state.upload_id is not None  # started by the first writer
    assert w._feed is not None  # streaming, not gathering
    assert (await _stored_state(driver, key))[0].claim == w._token
    other = await driver.writer(key, append=True)
    other.expect(PART)
    with pytest.raises(WriterBusy):
        await other.write(data[PART + 10 : 2 * PART + 10])
    await _write(w, data[PART + 10 + MiB : 2 * PART])
    await w.close()
    state, _ = await _stored_state(driver, key)
    assert state.claim is None and len(state.etags) == 2  # released with the progress
    assert _held([w]) == 0 and driver.part_budget.peak == 0  # nothing gathered
    w = await driver.writer(key, append=True)
    await _write(w, data[2 * PART :])
    await w.commit()
    assert await driver.get(key) == data


@pytest.fixture
async def short_claims(
    server: s3_servers.S3Server, proxy: s3_servers.FaultProxy, no_ca_bundle: None
) -> AsyncIterator[Any]:
    """Claims of 4 s (renewed every 2/3 s; a streamed part stops once the last renewal is 2 s
    old)."""
    d = await _driver(server, proxy, upload_claim_seconds=4.0)
    yield d
    await d.close()


async def test_a_claim_is_renewed_while_the_client_pauses(short_claims: Any) -> None:
    """A client pausing mid-part for longer than the claim's lifetime keeps the session: the
    claim is renewed in the background while the part uploads."""
    d, key = short_claims, "r/_uploads/pause/data"
    data = os.urandom(2 * PART + 10)
    w = await _continuing(d, key, data)
    first = (await _stored_state(d, key))[0].claimed_at
    await asyncio.sleep(5.0)  # longer than the claim lasts
    state, _ = await _stored_state(d, key)
    assert state.claim == w._token and state.claimed_at > first and state.claim_seconds == 4.0
    other = await d.writer(key, append=True)
    with pytest.raises(WriterBusy):
        await other.write(data[PART + 10 : 2 * PART + 10])
    await _write(w, data[PART + 10 + MiB : 2 * PART + 10])
    await w.commit()
    assert await d.get(key) == data


async def test_a_dead_writers_claim_expires(short_claims: Any) -> None:
    """A replica killed mid-part (its upload and its renewals stop, nothing is released)
    keeps the session busy for the claim's lifetime, then another writer finishes it."""
    d, key = short_claims, "r/_uploads/dead/data"
    data = os.urandom(3 * PART)
    w = await _continuing(d, key, data)
    assert w._renewer is not None and w._feed is not None and w._feed.task is not None
    w._renewer.cancel()  # killed: no renewal, no part, no close
    w._feed.task.cancel()
    other = await d.writer(key, append=True)
    other.expect(len(data) - PART - 10)
    with pytest.raises(WriterBusy):
        await other.write(data[PART + 10 : 2 * PART + 10])
    await asyncio.sleep(4.2)
    other = await d.writer(key, append=True)
    assert other.size == PART + 10  # nothing of the dead writer's part
    other.expect(len(data) - PART - 10)
    await _write(other, data[PART + 10 :])
    await other.commit()
    assert await d.get(key) == data


async def test_a_writer_whose_claim_was_taken_stops_its_part(short_claims: Any) -> None:
    """A process that stalled past its claim's lifetime finds, at its next renewal, that
    another writer took the session: it stops its part before the part completes (no part
    of its lands over the other's) and its ``write`` and ``close`` change nothing more."""
    d, key = short_claims, "r/_uploads/taken/data"
    data = os.urandom(2 * PART + 10)
    w = await _continuing(d, key, data)
    state, inline = await _stored_state(d, key)
    state.claim, state.claimed_at = "another", time.time()
    await d.put_full(d.full_key(key) + STATE_SUFFIX, state.to_bytes(inline or b""))
    await asyncio.sleep(1.5)  # a renewal is due every 2/3 s
    with pytest.raises(WriterBusy):
        await w.write(data[PART + 10 + MiB : PART + 10 + 2 * MiB])
    await w.close()
    after, _ = await _stored_state(d, key)
    assert after.claim == "another" and len(after.etags) == 1  # untouched by the loser
    assert await _parts(d, key) == [PART]  # its part never completed


async def test_a_claim_that_cannot_be_renewed_stops_the_part(
    short_claims: Any, proxy: s3_servers.FaultProxy
) -> None:
    """The store refuses the renewals (unreachable for the state object): once the last
    renewal is half the claim's lifetime old, the streamed part refuses its next piece and
    the write fails; the session resumes where that part began."""
    d, key = short_claims, "r/_uploads/stale/data"
    data = os.urandom(2 * PART + 10)
    w = await _continuing(d, key, data)

    def rule(method: str, target: str) -> Any:
        if method == "PUT" and STATE_SUFFIX in target:
            return ("status", 503, s3_servers.error_body("SlowDown"))
        return None

    proxy.rule = rule
    await asyncio.sleep(2.4)  # past half the lifetime without a renewal
    with pytest.raises(StorageUnavailable):
        await _write(w, data[PART + 10 + MiB : 2 * PART + 10])
    proxy.clear()
    await w.close()
    assert await _parts(d, key) == [PART]
    w = await d.writer(key, append=True)
    assert w.size == PART + 10  # cut back to where the part began
    w.expect(PART)
    await _write(w, data[PART + 10 :])
    await w.commit()
    assert await d.get(key) == data
