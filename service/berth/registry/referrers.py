"""The referrers API: manifests of a repository whose ``subject`` is a given digest.

The repository's revisions are the only source of truth: they are listed on every request, and
each revision's subject is read once per process and cached by digest (a manifest never
changes). So referrers pushed through any registry sharing the storage (Distribution knows
nothing of ``subject``) are listed, and a deleted manifest disappears at once, with no second
index to keep consistent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..storage import paths
from ..storage.driver import PathNotFound, StorageDriver
from .cache import LRUCache
from .digest import ALGORITHMS, Digest
from .errors import DigestInvalid, ManifestInvalid, ManifestUnknown
from .manifest import Descriptor
from .manifest_store import ManifestStore

# Cold summaries are read with bounded concurrency: a repository may hold many revisions.
READ_CONCURRENCY = 32
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Summary:
    subject: Digest | None
    descriptor: Descriptor | None  # None: unreadable or not a manifest; never a referrer


class Referrers:
    def __init__(self, driver: StorageDriver, manifests: ManifestStore, cache_entries: int):
        self.driver = driver
        self.manifests = manifests
        self._summaries: LRUCache[Digest, _Summary] = LRUCache(cache_entries)

    async def find(
        self, name: str, subject: Digest, artifact_type: str | None = None
    ) -> list[dict[str, Any]]:
        """Descriptors (OCI image index entries) of the referrers of ``subject`` in ``name``."""
        limit = asyncio.Semaphore(READ_CONCURRENCY)
        digests = await self._revisions(name)
        summaries = await asyncio.gather(*(_bounded(limit, self._summary(d)) for d in digests))
        matches = [
            s.descriptor
            for s in summaries
            if s.subject == subject
            and s.descriptor is not None
            and (artifact_type is None or s.descriptor.artifact_type == artifact_type)
        ]
        # A listed revision directory may have lost its link (a delete through Distribution).
        present = await asyncio.gather(
            *(self.manifests.has_revision(name, d.digest) for d in matches)
        )
        return [d.to_json() for d, ok in zip(matches, present, strict=True) if ok]

    async def _revisions(self, name: str) -> list[Digest]:
        found: list[Digest] = []
        for algorithm in ALGORITHMS:
            try:
                hexes = await self.driver.list(paths.revisions(name, algorithm))
            except PathNotFound:
                continue
            for hex_ in hexes:
                try:
                    found.append(Digest.parse(f"{algorithm}:{hex_}"))
                except DigestInvalid:
                    continue
        return found

    async def _summary(self, digest: Digest) -> _Summary:
        cached = self._summaries.get(digest)
        if cached is not None:
            return cached
        try:
            stored = await self.manifests.load(digest)
        except (ManifestUnknown, ManifestInvalid):
            # Not cached: the content may appear later (a push racing this request).
            return _Summary(None, None)
        m = stored.manifest
        summary = _Summary(
            subject=m.subject.digest if m.subject else None,
            descriptor=Descriptor(
                media_type=m.media_type,
                digest=digest,
                size=len(stored.body),
                artifact_type=m.referrer_artifact_type(),
                annotations=m.annotations,
            ),
        )
        self._summaries.put(digest, summary)
        return summary


async def _bounded(limit: asyncio.Semaphore, work: Awaitable[T]) -> T:
    async with limit:
        return await work
