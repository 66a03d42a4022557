"""Blobs: global content by digest, and each repository's links to it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from ..storage import paths
from ..storage.driver import PathNotFound, StorageDriver, StorageUnavailable
from .cache import LRUCache
from .digest import Digest
from .errors import BlobUnknown
from .freshness import Generation, PresenceCache

# A GC run never issues a delete more than TOMBSTONE_DEADLINE_SECONDS after writing its tombstone
# (berth.gc.sweep); writers treat older tombstones as abandoned. The gap covers request timeouts.
TOMBSTONE_DEADLINE_SECONDS = 30.0
TOMBSTONE_STALE_SECONDS = 120.0
RESERVE_ATTEMPTS = 10


class BlobStore:
    def __init__(
        self,
        driver: StorageDriver,
        cache_entries: int,
        link_staleness: float = 0.0,
        redirect_reuse: float = 0.0,
        generation: Generation | None = None,
    ) -> None:
        self.driver = driver
        # digest → size; a blob's content never changes, only whether it exists (GC).
        self._sizes: LRUCache[Digest, int] = LRUCache(cache_entries)
        # Link keys seen present, trusted for ``link_staleness`` seconds (see freshness.py).
        self.links = PresenceCache(link_staleness, cache_entries, generation)
        # digest → (URL, monotonic time it stops being handed out)
        self._urls: LRUCache[Digest, tuple[str, float]] = LRUCache(cache_entries)
        self._redirect_reuse = redirect_reuse

    async def has_link(self, key: str, *, fresh: bool = False) -> bool:
        """Whether the link object ``key`` exists: from the presence cache unless ``fresh``
        (writes check fresh; reads accept the staleness bound)."""
        if not fresh and self.links.fresh(key):
            return True
        try:
            await self.driver.stat(key)
        except PathNotFound:
            self.links.discard(key)
            return False
        self.links.remember(key)
        return True

    async def size(self, digest: Digest) -> int:
        """Size of the blob in global storage; BLOB_UNKNOWN when absent."""
        cached = self._sizes.get(digest)
        if cached is not None:
            return cached
        try:
            info = await self.driver.stat(paths.blob_data(digest))
        except PathNotFound:
            raise BlobUnknown(f"blob unknown: {digest}") from None
        self._sizes.put(digest, info.size)
        return info.size

    async def exists(self, digest: Digest) -> bool:
        try:
            await self.size(digest)
        except BlobUnknown:
            return False
        return True

    def forget(self, digest: Digest) -> None:
        self._sizes.discard(digest)

    async def reserve(self, digest: Digest, *, touch_absent: bool = False) -> int | None:
        """Size of the blob, read fresh (never cached), guaranteed to survive a concurrent GC.

        The writer half of the GC handshake (docs/gc.md): rewrite the blob's ``touch`` object,
        then look for GC tombstones. A GC run writes its tombstone before its final re-check of
        ``touch``, so either that GC sees this touch and keeps the blob (and its links), or we
        see its tombstone and wait until it is done. Call it before writing anything that
        refers to the blob (a link, a manifest revision); None means the blob is absent.

        An absent blob is reported without writing anything, unless ``touch_absent`` (a writer
        about to put the blob there): a request naming unknown digests (a manifest, a mount)
        must leave no ``touch`` behind, or every failed request could create directories.
        """
        known: int | None = None
        if not touch_absent:
            known = await self.fresh_size(digest)
            if known is None:
                self.forget(digest)
                return None
        for attempt in range(RESERVE_ATTEMPTS):
            await self.driver.put(paths.blob_touch(digest), b"")
            if known is not None:
                # Content never changes, so only whether ``data`` still exists (in the same
                # listing that shows tombstones) needs reading after the touch.
                names = await self._list_blob_dir(digest)
                size = known if paths.BLOB_DATA in names else None
            else:
                names, size = await asyncio.gather(
                    self._list_blob_dir(digest), self.fresh_size(digest)
                )
            tombstones = [n for n in names if n.startswith(paths.TOMBSTONE_PREFIX)]
            if not tombstones or await self._tombstones_stale(digest, tombstones):
                if size is None:
                    self.forget(digest)
                else:
                    self._sizes.put(digest, size)
                return size
            await asyncio.sleep(min(0.05 * 2**attempt, 2.0))
        raise StorageUnavailable(f"blob {digest} is being garbage-collected; retry")

    async def _list_blob_dir(self, digest: Digest) -> list[str]:
        try:
            return await self.driver.list(paths.blob_dir(digest))
        except PathNotFound:
            return []

    async def fresh_size(self, digest: Digest) -> int | None:
        try:
            return (await self.driver.stat(paths.blob_data(digest))).size
        except PathNotFound:
            return None

    async def _tombstones_stale(self, digest: Digest, names: list[str]) -> bool:
        """A tombstone far older than our touch belongs to a GC that died (or gave up)."""
        try:
            touched = (await self.driver.stat(paths.blob_touch(digest))).modified
        except PathNotFound:
            return False
        for name in names:
            with contextlib.suppress(PathNotFound):
                info = await self.driver.stat(f"{paths.blob_dir(digest)}/{name}")
                if touched - info.modified <= TOMBSTONE_STALE_SECONDS:
                    return False
        return True

    async def is_linked(self, name: str, digest: Digest, *, fresh: bool = False) -> bool:
        """Whether the repository may serve this blob (a layer link, or a manifest revision)."""
        for key in (paths.layer_link(name, digest), paths.revision_link(name, digest)):
            if await self.has_link(key, fresh=fresh):
                return True
        return False

    async def size_in(self, name: str, digest: Digest) -> int:
        """Size of a blob the repository links to; BLOB_UNKNOWN otherwise."""
        cached = self._sizes.get(digest)
        if cached is not None and self.links.fresh(paths.layer_link(name, digest)):
            return cached  # the warm path of every pull: no task, no storage round trip
        linked, size = await asyncio.gather(
            self.is_linked(name, digest), self._size_or_none(digest)
        )
        if not linked or size is None:
            raise BlobUnknown(f"blob unknown to repository {name}: {digest}")
        return size

    async def _size_or_none(self, digest: Digest) -> int | None:
        try:
            return await self.size(digest)
        except BlobUnknown:
            return None

    async def link(self, name: str, digest: Digest) -> None:
        key = paths.layer_link(name, digest)
        await self.driver.put(key, str(digest).encode())
        self.links.remember(key)

    async def unlink(self, name: str, digest: Digest) -> None:
        key = paths.layer_link(name, digest)
        if not await self.has_link(key, fresh=True):
            raise BlobUnknown(f"blob unknown to repository {name}: {digest}")
        self.links.forget(key)  # this replica sees the delete at once
        await self.driver.delete(key)

    def open(
        self, digest: Digest, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        return self.driver.read(paths.blob_data(digest), offset, length)

    async def redirect_url(self, digest: Digest, expires_in: int) -> str | None:
        """A presigned URL, reused for a fraction of its validity (signing costs CPU on every
        pull of every layer); a client always gets at least the rest of it."""
        now = time.monotonic()
        cached = self._urls.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        url = await self.driver.redirect_url(paths.blob_data(digest), expires_in)
        if url is not None and self._redirect_reuse > 0:
            self._urls.put(digest, (url, now + expires_in * self._redirect_reuse))
        return url

    async def put_content(self, digest: Digest, data: bytes) -> None:
        """Store small content (a manifest) by digest, unless it is already there.

        Reserved (not the cached ``exists``) so a GC deleting this digest right now cannot
        leave the revision link the caller writes next pointing at nothing.
        """
        if await self.reserve(digest, touch_absent=True) is None:
            await self.driver.put(paths.blob_data(digest), data)
            self._sizes.put(digest, len(data))
