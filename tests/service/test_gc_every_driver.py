"""berth gc mark and sweep on every storage driver (filesystem, moto, SeaweedFS).

The cases of test_gc_mark_sweep.py that decide what is kept and what is removed, checked
through the driver interface instead of files: tagged manifests kept, untagged ones removed
with ``delete_untagged``, orphan blobs removed, referrers of kept manifests kept, index
children kept. GC runs on a driver of its own (another replica's view of the storage).

Filesystem files are aged by backdating their mtimes; S3 modification times have one-second
resolution and cannot be backdated, so on S3 the test waits past the cut-off of a zero grace
period instead (as test_gc_s3.py does). Every GC here runs with ``grace_period=0``.

What clients see after GC is asked of a replica started after it: a running replica trusts
its cached links for up to ``cache.link_staleness_seconds`` (docs/architecture.md), so the
replica that pushed may serve a collected manifest for that long.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from berth.gc.report import Report
from berth.gc.verify import find_problems
from berth.registry.digest import Digest
from berth.storage import paths
from berth.storage.driver import PathNotFound, StorageDriver

from .conftest import Backend
from .gc_fixtures import age, gc, manifest_blobs, push_image, push_referrer
from .test_gc_mark_sweep import _assert_pullable, _scenario

# These tests age storage: see the fixture.
pytestmark = pytest.mark.usefixtures("no_reservation_reuse")

S3_AGE_WAIT = 2.2  # past the cut-off (grace 0 s + 1 s slack) at one-second resolution


async def age_storage(backend: Backend) -> None:
    """Make everything stored so far old enough for a GC with ``grace_period=0``."""
    if backend.kind == "filesystem":
        age(backend.root)
    else:
        await asyncio.sleep(S3_AGE_WAIT)


async def exists(storage: StorageDriver, key: str) -> bool:
    try:
        await storage.stat(key)
    except PathNotFound:
        return False
    return True


def blob(digest: str) -> str:
    return paths.blob_data(Digest.parse(digest))


def layer_link(repo: str, digest: str) -> str:
    return paths.layer_link(repo, Digest.parse(digest))


def revision_link(repo: str, digest: str) -> str:
    return paths.revision_link(repo, Digest.parse(digest))


async def test_default_keeps_every_revision_and_removes_unreferenced_blobs(
    client: httpx.AsyncClient, backend: Backend, storage: StorageDriver
) -> None:
    s = await _scenario(client)
    await age_storage(backend)
    report = await gc(storage, grace_period=0)
    assert report.ok, report.errors
    async with backend.client(redirect=False) as c:
        await _check_default(c, storage, s, report)
    # A second run finds nothing more.
    again = await gc(storage, grace_period=0)
    assert again.objects_removed == 0


async def _check_default(
    c: httpx.AsyncClient, storage: StorageDriver, s: dict[str, tuple[str, bytes]], report: Report
) -> None:
    for key in ("tagged", "untagged", "child1", "child2", "index", "sig", "sig-of-untagged"):
        await _assert_pullable(c, "app", *s[key])
        assert await exists(storage, revision_link("app", s[key][0])), key
    assert not await exists(storage, blob(s["orphan"][0]))
    assert not await exists(storage, layer_link("app", s["orphan"][0]))
    # The deleted manifest and the blobs only it used are gone.
    assert not await exists(storage, blob(s["deleted"][0]))
    for digest in manifest_blobs(s["deleted"][1]):
        assert not await exists(storage, blob(digest))
        assert not await exists(storage, layer_link("app", digest))
    assert report.blobs_deleted == 2 + len(manifest_blobs(s["deleted"][1]))
    assert report.bytes_deleted > 0
    assert await find_problems(storage) == []


async def test_delete_untagged_keeps_index_children_and_referrers_of_kept(
    client: httpx.AsyncClient, backend: Backend, storage: StorageDriver
) -> None:
    s = await _scenario(client)
    await age_storage(backend)
    report = await gc(storage, grace_period=0, delete_untagged=True)
    assert report.ok, report.errors
    async with backend.client(redirect=False) as c:
        await _check_delete_untagged(c, storage, s, report)


async def _check_delete_untagged(
    c: httpx.AsyncClient, storage: StorageDriver, s: dict[str, tuple[str, bytes]], report: Report
) -> None:
    for key in ("tagged", "child1", "child2", "index", "sig"):
        await _assert_pullable(c, "app", *s[key])
        digest, body = s[key]
        assert await exists(storage, blob(digest)), key
        assert await exists(storage, revision_link("app", digest)), key
        for b in manifest_blobs(body):
            assert await exists(storage, blob(b)), (key, b)
            assert await exists(storage, layer_link("app", b)), (key, b)
    r = await c.get(f"/v2/app/referrers/{s['tagged'][0]}")
    assert [m["digest"] for m in r.json()["manifests"]] == [s["sig"][0]]
    for key in ("untagged", "sig-of-untagged"):
        digest, _body = s[key]
        assert not await exists(storage, revision_link("app", digest)), key
        assert not await exists(storage, blob(digest)), key
        r = await c.get(f"/v2/app/manifests/{digest}")
        assert r.status_code == 404
    # Blobs shared with kept manifests survive (the empty config of both referrers).
    for digest in manifest_blobs(s["sig"][1]):
        assert await exists(storage, blob(digest))
    # The orphan blob and the deleted manifest's blobs go as well.
    assert not await exists(storage, blob(s["orphan"][0]))
    for digest in [s["deleted"][0], *manifest_blobs(s["deleted"][1])]:
        assert not await exists(storage, blob(digest))
    assert report.manifests_deleted == 2
    assert await find_problems(storage) == []
    r = await c.get("/v2/app/tags/list")
    assert sorted(r.json()["tags"]) == ["multi", "v1"]


async def test_tag_history_and_referrer_index_entries_are_swept(
    client: httpx.AsyncClient, backend: Backend, storage: StorageDriver
) -> None:
    old = await push_image(client, "app", "v1", seed=b"old")
    sig = await push_referrer(client, "app", old, b"sig-old")
    new = await push_image(client, "app", "v1", seed=b"new")  # the tag moves
    await age_storage(backend)
    report = await gc(storage, grace_period=0, delete_untagged=True)
    assert report.ok, report.errors
    history = f"{paths.tag_dir('app', 'v1')}/index/sha256"
    assert await storage.list(history) == [new[0][7:]]
    referrers = f"{paths.manifests('app')}/referrers"
    assert [i.key async for i in storage.walk(referrers) if i.key.endswith("/link")] == []
    assert not await exists(storage, blob(sig[0]))
    assert not await exists(storage, blob(old[0]))
    async with backend.client(redirect=False) as c:
        await _assert_pullable(c, "app", *new)
    assert await find_problems(storage) == []


async def test_blob_shared_across_repositories_is_kept_while_one_uses_it(
    client: httpx.AsyncClient, backend: Backend, storage: StorageDriver
) -> None:
    a = await push_image(client, "one", "v1", seed=b"shared")
    b = await push_image(client, "two", "v1", seed=b"shared")  # the same blobs, linked in both
    assert a == b
    r = await client.delete(f"/v2/one/manifests/{a[0]}")
    assert r.status_code == 202
    await age_storage(backend)
    report = await gc(storage, grace_period=0, delete_untagged=True)
    assert report.ok and report.blobs_deleted == 0
    async with backend.client(redirect=False) as c:
        await _assert_pullable(c, "two", *b)
    # repository "one" keeps its (harmless) layer links to blobs that still exist.
    for digest in manifest_blobs(a[1]):
        assert await exists(storage, layer_link("one", digest))
