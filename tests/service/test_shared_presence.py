"""The link cache the worker processes of one server share (registry/freshness.py).

Each worker is a ``PresenceCache`` over the same memory-mapped file: a key one worker saw
present (a link; a blob's data, with its size) is trusted by the others within the same
staleness bound; a delete in any of them, and the bound itself, end that trust everywhere; a
slot written by another key or torn by a concurrent writer matches nothing. Then two apps over
one storage and one shared file, on every driver: a blob pushed through one worker is answered
by the other without a storage request.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from berth.app import create_app
from berth.registry.freshness import (
    _SLOT,
    GENERATION_ENV,
    TABLE_OFFSET,
    Generation,
    PresenceCache,
    key_hash,
)

from .conftest import Backend, push_blob
from .gc_fixtures import CountingDriver

TTL = 5.0


@pytest.fixture
def shared_file(tmp_path: Path) -> str:
    return str(tmp_path / "cache")


def _workers(path: str, n: int = 2, ttl: float = TTL) -> list[PresenceCache]:
    return [PresenceCache(ttl, 1000, Generation(path)) for _ in range(n)]


def test_what_one_worker_saw_the_other_trusts_with_its_value(shared_file: str) -> None:
    a, b = _workers(shared_file)
    sent = time.monotonic()
    a.remember("repo/_layers/x/link", sent, 1234)
    assert b.fresh("repo/_layers/x/link")
    assert b.fresh("repo/_layers/x/link", since=sent) and not b.fresh(
        "repo/_layers/x/link", since=sent + 0.001
    )
    assert b.value("repo/_layers/x/link") == 1234
    a.remember("repo/_manifests/y/link")
    assert b.fresh("repo/_manifests/y/link") and b.value("repo/_manifests/y/link") is None
    assert not b.fresh("repo/_layers/other/link")


def test_a_delete_in_one_worker_ends_trust_in_all(shared_file: str) -> None:
    a, b = _workers(shared_file)
    a.remember("k1", value=1)
    b.remember("k2", value=2)
    assert a.fresh("k2") and b.fresh("k1")
    b.forget("k1")
    assert not a.fresh("k1") and not a.fresh("k2") and not b.fresh("k2")


def test_the_bound_holds_for_shared_entries(shared_file: str) -> None:
    a, b = _workers(shared_file)
    a.remember("old", time.monotonic() - TTL - 0.1, 5)
    assert not b.fresh("old") and b.value("old") is None


def test_storage_saying_absent_drops_the_shared_entry(shared_file: str) -> None:
    a, b, c = _workers(shared_file, 3)
    a.remember("k", value=3)
    assert b.fresh("k")  # copied into b's own entries
    b.discard("k")
    assert not b.fresh("k") and not c.fresh("k")


def test_a_slot_taken_by_another_key_or_torn_matches_nothing(shared_file: str) -> None:
    a, b = _workers(shared_file)
    slots = 1024  # the smallest table, for 1,000 entries
    first = "key-0"
    other = next(
        f"key-{i}"
        for i in range(1, 100_000)
        if key_hash(f"key-{i}") % slots == key_hash(first) % slots
    )
    a.remember(first, value=1)
    a.remember(other, value=2)  # same slot: overwrites
    assert not b.fresh(first) and b.value(other) == 2
    # A concurrent writer caught half-way: the checksum fails, the slot counts as empty.
    at = TABLE_OFFSET + (key_hash(other) % slots) * _SLOT.size
    with open(shared_file, "r+b") as f:
        f.seek(at + 8)
        f.write(b"\xff" * 8)  # the send time changed, the checksum not
    (c,) = _workers(shared_file, 1)  # a worker that has not copied the entry yet
    assert not c.fresh(other) and c.value(other) is None


def test_no_shared_file_no_sharing() -> None:
    a, b = PresenceCache(TTL, 1000), PresenceCache(TTL, 1000)
    a.remember("k")
    assert a.fresh("k") and not b.fresh("k")


@pytest.fixture
def two_workers_env(shared_file: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(GENERATION_ENV, shared_file)
    yield


async def test_a_blob_pushed_through_one_worker_is_served_by_the_other_from_memory(
    backend: Backend, two_workers_env: None
) -> None:
    """Two apps (a server's two workers) over one storage and one shared file: after a push
    through the first, the second answers HEAD and the redirect or GET without asking storage
    whether the repository links the blob, or its size."""
    async with backend.driver() as inner:
        counted = CountingDriver(inner)
        first = create_app(backend.settings(), driver=inner)
        second = create_app(backend.settings(), driver=counted)
        async with (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=first), base_url="http://r") as a,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=second), base_url="http://r") as b,
        ):
            blob = await push_blob(a, "app", b"pushed through the first worker")
            counted.reset()
            r = await b.head(f"/v2/app/blobs/{blob}")
            assert r.status_code == 200 and r.headers["Content-Length"] == "31"
            assert counted.requests == 0, counted.ops
            r = await b.get(f"/v2/app/blobs/{blob}")
            assert r.status_code in (200, 307)
            assert not counted.ops["stat"], counted.ops  # neither the link nor the size
