"""berth gc: what is kept (tags, index children, referrers) and what is removed."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from berth.gc.report import Report

from .conftest import Backend
from .gc_fixtures import (
    OCI_INDEX,
    OCI_MANIFEST,
    age,
    blob_path,
    gc,
    layer_link,
    manifest_blobs,
    problems,
    push_blob,
    push_image,
    push_index,
    push_referrer,
    revision_link,
    snapshot,
)

# These tests age storage: see the fixture.
pytestmark = pytest.mark.usefixtures("no_reservation_reuse")


async def _scenario(c: httpx.AsyncClient) -> dict[str, tuple[str, bytes]]:
    """Tagged image, untagged image, tagged index of two untagged children, a referrer of the
    tagged image, a referrer of the untagged image, an orphan blob, a deleted manifest."""
    s: dict[str, tuple[str, bytes]] = {}
    s["tagged"] = await push_image(c, "app", "v1", seed=b"tagged")
    s["untagged"] = await push_image(c, "app", None, seed=b"untagged")
    s["child1"] = await push_image(c, "app", None, seed=b"child1")
    s["child2"] = await push_image(c, "app", None, seed=b"child2")
    s["index"] = await push_index(c, "app", "multi", [s["child1"], s["child2"]])
    s["sig"] = await push_referrer(c, "app", s["tagged"], b"kept")
    s["sig-of-untagged"] = await push_referrer(c, "app", s["untagged"], b"dropped")
    s["deleted"] = await push_image(c, "app", "gone", seed=b"deleted")
    r = await c.delete(f"/v2/app/manifests/{s['deleted'][0]}")
    assert r.status_code == 202
    orphan = await push_blob(c, "app", b"orphan blob, never referenced")
    s["orphan"] = (orphan, b"")
    return s


async def _assert_pullable(c: httpx.AsyncClient, repo: str, digest: str, body: bytes) -> None:
    r = await c.get(
        f"/v2/{repo}/manifests/{digest}", headers={"Accept": f"{OCI_MANIFEST},{OCI_INDEX}"}
    )
    assert r.status_code == 200, (digest, r.text)
    assert r.content == body
    for blob in manifest_blobs(body):
        r = await c.get(f"/v2/{repo}/blobs/{blob}")
        assert r.status_code == 200, (blob, r.status_code)


async def test_default_keeps_every_revision_and_removes_unreferenced_blobs(
    client: httpx.AsyncClient, storage_root: Path
) -> None:
    c = client
    s = await _scenario(c)
    age(storage_root)
    report = await gc(storage_root, grace_period=0)
    assert report.ok, report.errors
    for key in ("tagged", "untagged", "child1", "child2", "index", "sig", "sig-of-untagged"):
        await _assert_pullable(c, "app", *s[key])
    assert not blob_path(storage_root, s["orphan"][0]).exists()
    assert not layer_link(storage_root, "app", s["orphan"][0]).exists()
    # The deleted manifest and the blobs only it used are gone.
    assert not blob_path(storage_root, s["deleted"][0]).exists()
    for blob in manifest_blobs(s["deleted"][1]):
        assert not blob_path(storage_root, blob).exists()
        assert not layer_link(storage_root, "app", blob).exists()
    assert report.blobs_deleted == 2 + len(manifest_blobs(s["deleted"][1]))
    assert report.bytes_deleted > 0
    assert await problems(storage_root) == []
    # A second run finds nothing more.
    again = await gc(storage_root, grace_period=0)
    assert again.objects_removed == 0


async def test_delete_untagged_keeps_index_children_and_referrers_of_kept(
    client: httpx.AsyncClient, storage_root: Path, backend: Backend
) -> None:
    s = await _scenario(client)
    age(storage_root)
    report = await gc(storage_root, grace_period=0, delete_untagged=True)
    assert report.ok, report.errors
    # A replica started after GC: the one that pushed trusts its cached links for up to
    # cache.link_staleness_seconds, and may serve a collected manifest that long.
    async with backend.client(redirect=False) as c:
        await _check_delete_untagged(c, storage_root, s, report)


async def _check_delete_untagged(
    c: httpx.AsyncClient, storage_root: Path, s: dict[str, tuple[str, bytes]], report: Report
) -> None:
    for key in ("tagged", "child1", "child2", "index", "sig"):
        await _assert_pullable(c, "app", *s[key])
    r = await c.get(f"/v2/app/referrers/{s['tagged'][0]}")
    assert [m["digest"] for m in r.json()["manifests"]] == [s["sig"][0]]
    for key in ("untagged", "sig-of-untagged"):
        digest, _body = s[key]
        assert not revision_link(storage_root, "app", digest).exists(), key
        assert not blob_path(storage_root, digest).exists(), key
        r = await c.get(f"/v2/app/manifests/{digest}")
        assert r.status_code == 404
    # Blobs shared with kept manifests survive (the empty config of both referrers).
    for blob in manifest_blobs(s["sig"][1]):
        assert blob_path(storage_root, blob).exists()
    assert report.manifests_deleted == 2
    assert await problems(storage_root) == []
    r = await c.get("/v2/app/tags/list")
    assert sorted(r.json()["tags"]) == ["multi", "v1"]


async def test_grace_period_protects_recent_content(
    client: httpx.AsyncClient, storage_root: Path
) -> None:
    c = client
    s = await _scenario(c)
    before = snapshot(storage_root)
    report = await gc(storage_root, grace_period=3600, delete_untagged=True)
    assert report.ok and report.objects_removed == 0
    assert snapshot(storage_root) == before
    assert blob_path(storage_root, s["orphan"][0]).exists()


async def test_dry_run_changes_nothing_and_predicts_the_real_run(
    client: httpx.AsyncClient, storage_root: Path
) -> None:
    c = client
    await _scenario(c)
    age(storage_root)
    before = snapshot(storage_root)
    dry = await gc(storage_root, grace_period=0, delete_untagged=True, dry_run=True)
    assert snapshot(storage_root) == before
    assert dry.dry_run and dry.blobs_deleted > 0
    assert len(dry.would_remove["blob"]) == dry.blobs_deleted
    real = await gc(storage_root, grace_period=0, delete_untagged=True)
    assert (real.blobs_deleted, real.bytes_deleted, real.manifests_deleted) == (
        dry.blobs_deleted,
        dry.bytes_deleted,
        dry.manifests_deleted,
    )
    assert real.links_deleted == dry.links_deleted


async def test_tag_history_and_referrer_index_entries_are_swept(
    client: httpx.AsyncClient, storage_root: Path
) -> None:
    c = client
    old = await push_image(c, "app", "v1", seed=b"old")
    sig = await push_referrer(c, "app", old, b"sig-old")
    new = await push_image(c, "app", "v1", seed=b"new")  # the tag moves
    age(storage_root)
    report = await gc(storage_root, grace_period=0, delete_untagged=True)
    assert report.ok, report.errors
    tags = storage_root / "docker/registry/v2/repositories/app/_manifests/tags/v1/index/sha256"
    assert sorted(p.name for p in tags.iterdir()) == [new[0][7:]]
    referrers = storage_root / "docker/registry/v2/repositories/app/_manifests/referrers"
    assert not any(referrers.rglob("link"))
    assert not blob_path(storage_root, sig[0]).exists()
    await _assert_pullable(c, "app", *new)
    assert await problems(storage_root) == []


async def test_blob_shared_across_repositories_is_kept_while_one_uses_it(
    client: httpx.AsyncClient, storage_root: Path
) -> None:
    c = client
    a = await push_image(c, "one", "v1", seed=b"shared")
    b = await push_image(c, "two", "v1", seed=b"shared")  # the same blobs, linked in both
    assert a == b
    r = await c.delete(f"/v2/one/manifests/{a[0]}")
    assert r.status_code == 202
    age(storage_root)
    report = await gc(storage_root, grace_period=0, delete_untagged=True)
    assert report.ok and report.blobs_deleted == 0
    await _assert_pullable(c, "two", *b)
    # repository "one" keeps its (harmless) layer links to blobs that still exist.
    for blob in manifest_blobs(a[1]):
        assert layer_link(storage_root, "one", blob).exists()
