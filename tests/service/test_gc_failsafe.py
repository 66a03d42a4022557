"""berth gc fails safe on content it cannot read, reads Docker schema 1, and handles sparse
content — on every storage driver (filesystem, S3 on moto, S3 on a real SeaweedFS).

Content is written straight through the driver in Distribution's layout: Berth refuses schema 1
and junk at manifest PUT, but a directory or bucket written by Distribution (or damaged) holds
them, and sparse indexes and images (``validation.manifests.allow_sparse``) name content that is
absent. S3 modification times cannot be backdated, so S3 tests wait a little over two seconds and
run GC with a zero grace period; the filesystem ones age their files instead.

When a present manifest cannot be read the rule is (docs/gc.md, "Unreadable manifests"): no blob
is removed anywhere, nothing in the repositories that hold one, other repositories are cleaned up
as usual, the report lists the manifests with ``ok`` false and ``berth gc`` exits 1.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from berth.config import S3Settings
from berth.gc.command import EXIT_FAILED, EXIT_OK, _run
from berth.gc.report import Report
from berth.gc.run import GCOptions, collect_garbage
from berth.registry.digest import Digest
from berth.storage import paths
from berth.storage.driver import PathNotFound, StorageDriver
from berth.storage.filesystem import FilesystemDriver

from .gc_fixtures import age

# These tests age storage: see the fixture.
pytestmark = pytest.mark.usefixtures("no_reservation_reuse")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
AGE_WAIT = 2.2  # S3: past the cut-off (grace 0 s + 1 s slack) at one-second resolution


# -- one storage per test, on every driver -------------------------------------------------------


@pytest.fixture(params=["filesystem", "moto", "seaweedfs"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Store]:
    if request.param == "filesystem":
        yield Store(FilesystemDriver(tmp_path / "root"))
        return
    from berth.storage.s3 import S3Driver

    request.getfixturevalue("no_ca_bundle")  # plain-http endpoints (tests/conftest.py)
    server = request.getfixturevalue(f"{request.param}_server")
    settings = S3Settings(**server.settings(root_directory=f"fs-{uuid.uuid4().hex[:12]}"))
    driver = S3Driver(settings)
    await driver.start()
    yield Store(driver, settings)
    await driver.close()


def sha256(data: bytes) -> Digest:
    return Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())


@dataclass
class Store:
    """Writes Distribution-layout content straight through a driver, and checks what is left."""

    driver: StorageDriver
    s3: S3Settings | None = None
    written: list[str] = field(default_factory=list)

    async def put(self, key: str, data: bytes) -> None:
        await self.driver.put(key, data)
        self.written.append(key)

    async def blob(self, repo: str, data: bytes, link: bool = True) -> Digest:
        digest = sha256(data)
        await self.put(paths.blob_data(digest), data)
        if link:
            await self.put(paths.layer_link(repo, digest), str(digest).encode())
        return digest

    async def manifest(
        self, repo: str, body: bytes, tag: str | None = None, revision: bool = True
    ) -> Digest:
        digest = sha256(body)
        await self.put(paths.blob_data(digest), body)
        if revision:
            await self.put(paths.revision_link(repo, digest), str(digest).encode())
        if tag is not None:
            await self.put(paths.tag_current_link(repo, tag), str(digest).encode())
            await self.put(paths.tag_index_link(repo, tag, digest), str(digest).encode())
        return digest

    async def image(
        self, repo: str, seed: str, tag: str | None = None, absent_layers: int = 0
    ) -> tuple[Digest, list[Digest]]:
        """An OCI image (config + 2 layers); the last ``absent_layers`` are never stored."""
        config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
        layers = [f"{seed} layer {i}".encode() * 10 for i in range(2)]
        blobs = [await self.blob(repo, config)]
        for i, data in enumerate(layers):
            if i >= len(layers) - absent_layers:
                blobs.append(sha256(data))  # sparse: named, not stored
            else:
                blobs.append(await self.blob(repo, data))
        body = image_body(config, layers)
        return await self.manifest(repo, body, tag), blobs

    async def exists(self, key: str) -> bool:
        try:
            await self.driver.stat(key)
        except PathNotFound:
            return False
        return True

    async def has_blob(self, digest: Digest) -> bool:
        return await self.exists(paths.blob_data(digest))

    async def settle(self) -> None:
        """Make everything written so far older than the cut-off of a zero-grace run."""
        if isinstance(self.driver, FilesystemDriver):
            age(self.driver.root)
        else:
            await asyncio.sleep(AGE_WAIT)

    async def gc(self, **kw: Any) -> Report:
        return await collect_garbage(self.driver, GCOptions(lease_settle=0.0, grace_period=0, **kw))

    async def reopen(self) -> StorageDriver:
        """The same storage through a new driver (``berth gc`` closes the one it is given)."""
        if self.s3 is None:
            assert isinstance(self.driver, FilesystemDriver)
            return FilesystemDriver(self.driver.root)
        from berth.storage.s3 import S3Driver

        return S3Driver(self.s3)


def descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": str(sha256(data)), "size": len(data)}


def image_body(config: bytes, layers: list[bytes], **extra: Any) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, data) for data in layers],
            **extra,
        }
    ).encode()


def index_body(children: list[tuple[Digest, int]]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": str(d), "size": size} for d, size in children
            ],
        }
    ).encode()


def schema1_body(repo: str, layers: list[Digest], signed: bool) -> bytes:
    """A Docker schema 1 manifest as Distribution stores it (the signature is not checked)."""
    body: dict[str, Any] = {
        "schemaVersion": 1,
        "name": repo,
        "tag": "old",
        "architecture": "amd64",
        # Newest layer first, and the empty layer repeated, as docker 1.x wrote them.
        "fsLayers": [{"blobSum": str(d)} for d in [*reversed(layers), layers[0]]],
        "history": [{"v1Compatibility": json.dumps({"id": str(i)})} for i in range(3)],
    }
    if signed:
        body["signatures"] = [
            {
                "header": {"jwk": {"crv": "P-256", "kty": "EC", "x": "AA", "y": "AA"}},
                "signature": "AAAA",
                "protected": "eyJmb3JtYXRMZW5ndGgiOjEwfQ",
            }
        ]
    return json.dumps(body, indent=3).encode()


def unreadable_body(kind: str, layers: list[bytes]) -> bytes:
    """Present content that names ``layers`` in a way GC cannot read."""
    if kind == "future-media-type":  # a manifest kind this Berth does not know
        config = b"{}"
        return image_body(config, layers, mediaType="application/vnd.example.future.v9+json")
    if kind == "schema-version-3":
        body = json.loads(image_body(b"{}", layers))
        body["schemaVersion"] = 3
        return json.dumps(body).encode()
    if kind == "truncated-json":
        return image_body(b"{}", layers)[:-40]
    if kind == "schema1-bad-blobsum":
        return json.dumps(
            {
                "schemaVersion": 1,
                "mediaType": SCHEMA1_SIGNED,
                "fsLayers": [{"blobSum": str(sha256(d))} for d in layers] + [{"blobSum": "md5:x"}],
            }
        ).encode()
    raise AssertionError(kind)


# -- unreadable manifests: fail safe -------------------------------------------------------------


async def test_unreadable_tagged_manifest_keeps_every_blob_and_fails(store: Store) -> None:
    """A tagged manifest GC cannot parse: its layers (and every other blob) stay, its repository
    is left alone, other repositories are cleaned up, the run reports it and ``berth gc``
    exits 1."""
    # "app": a good tagged image, an unreadable tagged manifest over two layers, an orphan.
    good, good_blobs = await store.image("app", "good", tag="v1")
    bad_layers = [b"layer only the unreadable manifest names" * 5, b"and another one" * 5]
    bad_layer_digests = [await store.blob("app", d) for d in bad_layers]
    bad = await store.manifest("app", unreadable_body("future-media-type", bad_layers), tag="bad")
    app_orphan = await store.blob("app", b"an orphan in app")
    # "other": a tagged image, an untagged one, an orphan, and a link to a blob that is gone.
    await store.image("other", "kept", tag="v1")
    untagged, untagged_blobs = await store.image("other", "untagged")
    other_orphan = await store.blob("other", b"an orphan in other")
    gone = await store.blob("other", b"deleted behind the registry's back")
    await store.driver.delete(paths.blob_data(gone))
    await store.settle()

    dry = await store.gc(delete_untagged=True, dry_run=True)
    assert not dry.ok
    assert dry.would_remove["blob"] == []

    report = await store.gc(delete_untagged=True)
    assert not report.ok
    assert report.blob_sweep_skipped
    assert report.unreadable == [
        {
            "repository": "app",
            "digest": str(bad),
            "tag": None,
            "reason": report.unreadable[0]["reason"],
        }
    ]
    assert "unsupported manifest media type" in report.unreadable[0]["reason"]
    assert report.blobs_deleted == 0 and report.bytes_deleted == 0
    # No blob anywhere was removed.
    for digest in [good, bad, *good_blobs, *bad_layer_digests, app_orphan, other_orphan]:
        assert await store.has_blob(digest), digest
    for digest in [untagged, *untagged_blobs]:
        assert await store.has_blob(digest), digest
    # Nothing in "app" was touched.
    for key in store.written:
        if "/repositories/app/" in key:
            assert await store.exists(key), key
    # "other" was cleaned up as usual: the untagged revision link and the dangling layer link.
    assert not await store.exists(paths.revision_link("other", untagged))
    assert not await store.exists(paths.layer_link("other", gone))
    assert await store.exists(paths.layer_link("other", other_orphan))  # its blob stays
    assert report.links_deleted == {"revision": 1, "layer": 1}

    # `berth gc` exits 1 and names the manifest in its JSON summary.
    out = io.StringIO()
    with redirect_stdout(out):
        status = await _run(
            await store.reopen(), GCOptions(lease_settle=0.0, grace_period=0), as_json=True
        )
    assert status == EXIT_FAILED
    summary = json.loads(out.getvalue())
    assert not summary["ok"] and summary["blobs_deleted"] == 0
    assert [(u["repository"], u["digest"]) for u in summary["unreadable"]] == [("app", str(bad))]
    assert await store.has_blob(bad_layer_digests[0])


@pytest.mark.parametrize("kind", ["schema-version-3", "truncated-json", "schema1-bad-blobsum"])
async def test_unreadable_untagged_revision_fails_safe(store: Store, kind: str) -> None:
    """An untagged revision GC cannot parse may be a referrer of a kept manifest (or an index
    over kept children): even with --delete-untagged it and its blobs stay."""
    await store.image("app", "tagged", tag="v1")
    layers = [f"{kind} layer".encode() * 8]
    layer_digests = [await store.blob("app", d) for d in layers]
    bad = await store.manifest("app", unreadable_body(kind, layers))
    await store.settle()

    report = await store.gc(delete_untagged=True)
    assert not report.ok
    assert [(u["repository"], u["digest"]) for u in report.unreadable] == [("app", str(bad))]
    assert report.objects_removed == 0
    assert await store.exists(paths.revision_link("app", bad))
    assert await store.has_blob(bad)
    for digest in layer_digests:
        assert await store.has_blob(digest)
        assert await store.exists(paths.layer_link("app", digest))


async def test_unreadable_index_child_keeps_blobs(store: Store) -> None:
    """A kept index whose child is present but unreadable; the child has no revision link (it
    is found only through the index)."""
    good, good_blobs = await store.image("app", "child-good")
    good_size = len(await store.driver.get(paths.blob_data(good)))
    layers = [b"a layer of the unreadable child" * 4]
    layer_digests = [await store.blob("app", d) for d in layers]
    child_body = unreadable_body("future-media-type", layers)
    child = await store.manifest("app", child_body, revision=False)
    index = await store.manifest(
        "app", index_body([(good, good_size), (child, len(child_body))]), tag="multi"
    )
    orphan = await store.blob("app", b"orphan")
    await store.settle()

    report = await store.gc(delete_untagged=True)
    assert not report.ok
    assert [(u["repository"], u["digest"]) for u in report.unreadable] == [("app", str(child))]
    assert report.objects_removed == 0
    for digest in [index, good, *good_blobs, child, *layer_digests, orphan]:
        assert await store.has_blob(digest), digest


async def test_unreadable_tag_link_fails_safe(store: Store) -> None:
    """A tag whose current link is not a digest: which manifest it keeps is unknown."""
    target, blobs = await store.image("app", "target")
    await store.put(paths.tag_current_link("app", "broken"), b"\x00\xffnot a digest")
    await store.settle()

    report = await store.gc(delete_untagged=True)
    assert not report.ok
    assert [(u["repository"], u["tag"]) for u in report.unreadable] == [("app", "broken")]
    assert report.objects_removed == 0
    assert await store.exists(paths.revision_link("app", target))
    for digest in [target, *blobs]:
        assert await store.has_blob(digest)


# -- Docker schema 1: read, not an error ---------------------------------------------------------


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
async def test_schema1_manifest_keeps_its_layers(store: Store, signed: bool) -> None:
    layers = [await store.blob("legacy", f"schema1 layer {i}".encode() * 6) for i in range(2)]
    manifest = await store.manifest("legacy", schema1_body("legacy", layers, signed), tag="old")
    orphan = await store.blob("legacy", b"orphan next to a schema 1 image")
    deleted, deleted_blobs = await store.image("legacy", "deleted")
    await store.driver.delete(paths.revision_link("legacy", deleted))
    await store.settle()

    report = await store.gc(delete_untagged=True)
    assert report.ok, report.errors
    assert report.unreadable == []
    for digest in [manifest, *layers]:
        assert await store.has_blob(digest), digest
        assert await store.exists(paths.layer_link("legacy", digest)) or digest == manifest
    assert await store.exists(paths.revision_link("legacy", manifest))
    for digest in [orphan, deleted, *deleted_blobs]:
        assert not await store.has_blob(digest), digest
    assert report.blobs_deleted == 2 + len(deleted_blobs)


# -- sparse content: absent is not unreadable ----------------------------------------------------


async def test_sparse_index_with_absent_children(store: Store) -> None:
    """An index naming one present child and two absent ones (one never stored, one whose data
    was deleted after the push): the present child is kept, garbage is still collected."""
    present, present_blobs = await store.image("app", "present")
    vanished, vanished_blobs = await store.image("app", "vanished")
    never = sha256(b"a child manifest that was never pushed")
    sizes = {d: len(await store.driver.get(paths.blob_data(d))) for d in (present, vanished)}
    index = await store.manifest(
        "app",
        index_body([(present, sizes[present]), (vanished, sizes[vanished]), (never, 99)]),
        tag="multi",
    )
    await store.driver.delete(paths.blob_data(vanished))
    orphan = await store.blob("app", b"garbage next to a sparse index")
    deleted, deleted_blobs = await store.image("app", "deleted")
    await store.driver.delete(paths.revision_link("app", deleted))
    await store.settle()

    report = await store.gc(delete_untagged=True)
    assert report.ok, report.errors
    assert report.unreadable == []
    for digest in [index, present, *present_blobs]:
        assert await store.has_blob(digest), digest
    assert await store.exists(paths.revision_link("app", present))
    # The vanished child's revision link pointed at nothing, so it went; its config and layers
    # were named only by its (now absent) body: garbage like any other.
    assert not await store.exists(paths.revision_link("app", vanished))
    for digest in [orphan, deleted, *deleted_blobs, *vanished_blobs]:
        assert not await store.has_blob(digest), digest
    # A second run finds nothing more and is still fine.
    again = await store.gc(delete_untagged=True)
    assert again.ok and again.objects_removed == 0


async def test_sparse_image_with_absent_layers(store: Store) -> None:
    """A tagged image whose last layer is absent, a referrer whose subject is absent: what is
    present is kept, garbage is collected, nothing is reported unreadable."""
    image, blobs = await store.image("app", "sparse", tag="v1", absent_layers=1)
    config = b"{}"
    await store.blob("app", config)
    sig_layer = b"signature of an absent manifest"
    await store.blob("app", sig_layer)
    absent_subject = {"mediaType": OCI_MANIFEST, "digest": str(sha256(b"gone")), "size": 4}
    sig = await store.manifest(
        "app", image_body(config, [sig_layer], subject=absent_subject), tag="sig"
    )
    orphan = await store.blob("app", b"garbage next to a sparse image")
    await store.settle()

    report = await store.gc(delete_untagged=True)
    assert report.ok, report.errors
    assert report.unreadable == []
    for digest in [image, *blobs[:-1], sig, sha256(config), sha256(sig_layer)]:
        assert await store.has_blob(digest), digest
    assert not await store.has_blob(blobs[-1])
    assert not await store.has_blob(orphan)
    assert report.blobs_deleted == 1


async def test_berth_gc_exit_status_ok_on_sparse_and_schema1(store: Store) -> None:
    await store.image("app", "sparse", tag="v1", absent_layers=1)
    layers = [await store.blob("legacy", b"schema1 layer" * 4)]
    await store.manifest("legacy", schema1_body("legacy", layers, signed=True), tag="old")
    await store.settle()
    out = io.StringIO()
    with redirect_stdout(out):
        status = await _run(
            await store.reopen(), GCOptions(lease_settle=0.0, grace_period=0), as_json=True
        )
    assert status == EXIT_OK, out.getvalue()
    assert json.loads(out.getvalue())["unreadable"] == []
    assert await store.has_blob(layers[0])
