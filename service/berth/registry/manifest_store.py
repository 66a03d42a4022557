"""Storing, fetching and deleting manifests in a repository."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from ..events.model import Origin
from ..storage import paths
from ..storage.driver import PathNotFound, StorageDriver
from .blobs import BlobStore
from .cache import LRUCache
from .digest import Digest
from .errors import (
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
)
from .manifest import Descriptor, Manifest, parse_manifest
from .names import is_digest_reference, lookup_reference, parse_reference, validate_tags
from .notify import Notifier
from .tags import Tags


@dataclass(frozen=True, slots=True)
class StoredManifest:
    digest: Digest
    body: bytes
    manifest: Manifest

    @property
    def media_type(self) -> str:
        return self.manifest.media_type


class ManifestStore:
    def __init__(
        self,
        driver: StorageDriver,
        blobs: BlobStore,
        tags: Tags,
        cache_bytes: int,
        *,
        allow_sparse: bool = False,
        events: Notifier | None = None,
    ) -> None:
        self.driver = driver
        self.events = events
        self.blobs = blobs
        self.tags = tags
        # validation.manifests.allow_sparse: absent referenced blobs and children are accepted.
        self.allow_sparse = allow_sparse
        # digest → parsed manifest; bodies are immutable, so this never goes stale.
        self._cache: LRUCache[Digest, StoredManifest] = LRUCache(cache_bytes)

    async def load(self, digest: Digest) -> StoredManifest:
        """A manifest's body by digest from global storage (no repository check)."""
        cached = self._cache.get(digest)
        if cached is not None:
            return cached
        try:
            body = await self.driver.get(paths.blob_data(digest))
        except PathNotFound:
            raise ManifestUnknown(f"manifest unknown: {digest}") from None
        stored = StoredManifest(digest, body, parse_manifest(body))
        self._cache.put(digest, stored, len(body) + 512)
        return stored

    async def has_revision(self, name: str, digest: Digest, *, fresh: bool = False) -> bool:
        """Whether the repository holds this manifest (within the link staleness bound, unless
        ``fresh``: writes check storage itself)."""
        return await self.blobs.has_link(paths.revision_link(name, digest), fresh=fresh)

    async def get(self, name: str, reference: str) -> StoredManifest:
        ref = lookup_reference(reference)
        if isinstance(ref, Digest):
            if not await self.has_revision(name, ref):
                raise ManifestUnknown(f"manifest unknown: {name}@{ref}")
            digest = ref
        else:
            # A tag only ever points at a stored revision, so no second lookup is needed.
            digest = await self.tags.resolve(name, ref)
        return await self.load(digest)

    async def pulled(
        self, name: str, reference: str, stored: StoredManifest, origin: Origin | None
    ) -> None:
        """Record that a request downloaded the manifest (when some endpoint wants pulls)."""
        if self.events is not None:
            tags = [] if is_digest_reference(reference) else [reference]
            await self.events.manifest(
                "pull",
                name,
                stored.digest,
                len(stored.body),
                stored.manifest,
                tags,
                origin,
            )

    async def put(
        self,
        name: str,
        reference: str,
        body: bytes,
        content_type: str | None,
        tags: Iterable[str] = (),
        origin: Origin | None = None,
        *,
        mirrored: bool = False,
    ) -> tuple[StoredManifest, list[str]]:
        """Store a manifest; returns it and the tags created from ``tags``.

        ``tags`` are the spec's ``tag`` query parameters: honoured for a push by digest (each
        validated before anything is written), ignored for a push by tag, where the spec gives
        them no meaning (no ``OCI-Tag`` header then tells the client to push them itself).

        ``mirrored``: a manifest copied from a pull-through upstream, whose blobs and children
        arrive later (when pulled), so its references are not required to be present.
        """
        ref = parse_reference(reference)
        extra = validate_tags(tags) if isinstance(ref, Digest) else []
        tagged = extra if isinstance(ref, Digest) else [ref]
        algorithm = ref.algorithm if isinstance(ref, Digest) else "sha256"
        digest = Digest(algorithm, hashlib.new(algorithm, body).hexdigest())
        if isinstance(ref, Digest) and ref != digest:
            raise DigestInvalid(f"manifest digest is {digest}, not {ref}")
        manifest = parse_manifest(body, content_type)
        if not mirrored:
            await self._verify_references(name, manifest)

        # Content first, then the links that make it visible: a crash in between leaves only
        # unreferenced content for garbage collection, never a link to nothing.
        await self.blobs.put_content(digest, body)
        # The revision and the tags' index entries are independent; the tags move last.
        revision = paths.revision_link(name, digest)
        await asyncio.gather(
            self.driver.put(revision, str(digest).encode()),
            *(self.tags.record(name, tag, digest) for tag in tagged),
        )
        self.blobs.links.remember(revision)
        await asyncio.gather(*(self.tags.point(name, tag, digest) for tag in tagged))
        stored = StoredManifest(digest, body, manifest)
        self._cache.put(digest, stored, len(body) + 512)
        if self.events is not None:
            # One event per tag it was pushed by (Distribution: the tag pushed; none by digest).
            await self.events.manifest("push", name, digest, len(body), manifest, tagged, origin)
        return stored, extra

    async def _verify_references(self, name: str, manifest: Manifest) -> None:
        # reserve() (fresh, never the size cache) before the link checks: a blob or child that
        # passes here survives any concurrent GC (docs/gc.md). With allow_sparse, what is
        # absent from the repository is skipped; what is present is reserved and checked all
        # the same.
        async def check_blob(desc: Descriptor) -> str | None:
            # The link is checked after the reservation: a GC unit that ends between a link
            # read and our touch (so we see no tombstone) may have removed the link, and only
            # a check after the touch is certain to see that. Alongside only while gc_quiet
            # rules any such unit out (reserve_linked).
            size, linked = await self.blobs.reserve_linked(name, desc.digest)
            if size is None or not linked:
                return None if self.allow_sparse else f"blob unknown: {desc.digest}"
            if size != desc.size:
                return f"size of {desc.digest} is {size}, not {desc.size}"
            return None

        async def check_child(desc: Descriptor) -> str | None:
            if await self.blobs.reserve(desc.digest) is not None and await self.has_revision(
                name, desc.digest, fresh=True
            ):
                return None
            return None if self.allow_sparse else f"manifest unknown: {desc.digest}"

        checks = [check_blob(d) for d in manifest.blob_references()]
        checks += [check_child(d) for d in manifest.manifests]
        problems = [p for p in await asyncio.gather(*checks) if p]
        if problems:
            size_problem = next((p for p in problems if p.startswith("size")), None)
            if size_problem:
                raise ManifestInvalid(size_problem, detail=problems[:20])
            raise ManifestBlobUnknown(problems[0], detail=problems[:20])

    async def delete(self, name: str, reference: str, origin: Origin | None = None) -> None:
        ref = lookup_reference(reference)
        if not isinstance(ref, Digest):
            pointed: Digest | None = None
            if self.events is not None:  # the event names what the tag pointed at
                with contextlib.suppress(ManifestUnknown, DigestInvalid):
                    pointed = await self.tags.resolve(name, ref)
            await self.tags.delete(name, ref)
            if self.events is not None:
                await self.events.tag_deleted(name, ref, pointed, origin)
            return
        if not await self.has_revision(name, ref, fresh=True):
            raise ManifestUnknown(f"manifest unknown: {name}@{ref}")
        for tag in await self.tags.pointing_at(name, ref):
            await self.driver.delete_tree(paths.tag_dir(name, tag))
        key = paths.revision_link(name, ref)
        self.blobs.links.forget(key)  # this replica sees the delete at once
        await self.driver.delete(key)
        if self.events is not None:
            await self.events.manifest_deleted(name, ref, await self._parsed(ref), origin)

    async def _parsed(self, digest: Digest) -> Manifest | None:
        """The manifest if it can still be read (its content outlives the revision link)."""
        try:
            return (await self.load(digest)).manifest
        except (ManifestUnknown, ManifestInvalid):
            return None


__all__ = ["ManifestStore", "StoredManifest"]
