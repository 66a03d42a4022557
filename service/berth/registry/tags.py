"""Tags: pointers from a name to a manifest digest, always read from storage (never cached)."""

from __future__ import annotations

import asyncio

from ..storage import paths
from ..storage.driver import PathNotFound, StorageDriver
from .digest import Digest
from .errors import ManifestUnknown, NameUnknown


class Tags:
    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver

    async def resolve(self, name: str, tag: str) -> Digest:
        try:
            link = await self.driver.get(paths.tag_current_link(name, tag))
        except PathNotFound:
            raise ManifestUnknown(f"manifest unknown: {name}:{tag}") from None
        return Digest.parse(link.decode().strip())

    async def record(self, name: str, tag: str, digest: Digest) -> None:
        """The tag's index entry; written before ``point``, as Distribution's GC keeps whatever
        a tag's index names."""
        await self.driver.put(paths.tag_index_link(name, tag, digest), str(digest).encode())

    async def point(self, name: str, tag: str, digest: Digest) -> None:
        """Move the tag: the one write that makes it visible."""
        await self.driver.put(paths.tag_current_link(name, tag), str(digest).encode())

    async def delete(self, name: str, tag: str) -> None:
        try:
            await self.driver.stat(paths.tag_current_link(name, tag))
        except PathNotFound:
            raise ManifestUnknown(f"manifest unknown: {name}:{tag}") from None
        await self.driver.delete_tree(paths.tag_dir(name, tag))

    async def all(self, name: str) -> list[str]:
        """Every tag of the repository, sorted; NAME_UNKNOWN if the repository does not exist.

        A repository has manifests, layers or uploads of its own: ``a`` is not one just
        because ``a/b`` is.
        """
        try:
            return await self.driver.list(paths.tags(name))
        except PathNotFound:
            pass
        try:
            children = await self.driver.list(paths.repository(name))
        except PathNotFound:
            children = []
        if not {"_manifests", "_layers", "_uploads"} & set(children):
            raise NameUnknown(f"repository name not known to registry: {name}")
        return []

    async def pointing_at(self, name: str, digest: Digest) -> list[str]:
        """Tags whose current link names ``digest``."""
        try:
            names = await self.driver.list(paths.tags(name))
        except PathNotFound:
            return []

        async def check(tag: str) -> str | None:
            try:
                return tag if await self.resolve(name, tag) == digest else None
            except ManifestUnknown:
                return None

        return [t for t in await asyncio.gather(*(check(t) for t in names)) if t]
