"""Blobs: global content by digest, and each repository's links to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ..storage import paths
from ..storage.driver import PathNotFound, StorageDriver
from .cache import LRUCache
from .digest import Digest
from .errors import BlobUnknown


class BlobStore:
    def __init__(self, driver: StorageDriver, cache_entries: int) -> None:
        self.driver = driver
        # digest → size; a blob's content never changes, only whether it exists (GC).
        self._sizes: LRUCache[Digest, int] = LRUCache(cache_entries)

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

    async def is_linked(self, name: str, digest: Digest) -> bool:
        """Whether the repository may serve this blob (a layer link, or a manifest revision)."""
        for key in (paths.layer_link(name, digest), paths.revision_link(name, digest)):
            try:
                await self.driver.stat(key)
                return True
            except PathNotFound:
                continue
        return False

    async def size_in(self, name: str, digest: Digest) -> int:
        """Size of a blob the repository links to; BLOB_UNKNOWN otherwise."""
        linked, size = await asyncio.gather(
            self.is_linked(name, digest), self._size_or_none(digest)
        )
        if not linked or size is None:
            raise BlobUnknown(f"blob unknown to repository: {digest}")
        return size

    async def _size_or_none(self, digest: Digest) -> int | None:
        try:
            return await self.size(digest)
        except BlobUnknown:
            return None

    async def link(self, name: str, digest: Digest) -> None:
        await self.driver.put(paths.layer_link(name, digest), str(digest).encode())

    async def unlink(self, name: str, digest: Digest) -> None:
        key = paths.layer_link(name, digest)
        try:
            await self.driver.stat(key)
        except PathNotFound:
            raise BlobUnknown(f"blob unknown to repository: {digest}") from None
        await self.driver.delete(key)

    def open(
        self, digest: Digest, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        return self.driver.read(paths.blob_data(digest), offset, length)

    async def redirect_url(self, digest: Digest, expires_in: int) -> str | None:
        return await self.driver.redirect_url(paths.blob_data(digest), expires_in)

    async def put_content(self, digest: Digest, data: bytes) -> None:
        """Store small content (a manifest) by digest, unless it is already there."""
        if not await self.exists(digest):
            await self.driver.put(paths.blob_data(digest), data)
            self._sizes.put(digest, len(data))
