"""Eviction of pull-through cache content (docs/proxy.md), as part of a GC run.

A blob referenced only by manifests of proxied repositories (an upstream's namespace) is cache
content: the next pull fetches it again. The mark leaves such a blob unmarked when the policy
chooses it (unused for ``proxy.evict_unused_seconds``, or the least recently used beyond
``proxy.max_bytes``), and the sweep removes it with its links, under the same handshake with
writers as any other blob (docs/gc.md). Manifests stay: they are small, and a tag keeps
pointing at content the upstream still has. Blobs a local repository references are never
evicted.

Last use is the latest of the blob's access record (``_berth/access/<alg>/<hex>``, rewritten by
the serving replicas, proxy/access.py), its ``touch`` and its data's write time.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ProxySettings
from ..registry.digest import Digest
from ..registry.errors import DigestInvalid
from ..storage import paths
from ..storage.driver import PathNotFound, StorageDriver
from .inventory import Inventory


@dataclass(frozen=True, slots=True)
class EvictionPolicy:
    upstreams: frozenset[str]  # names: the first component of proxied repositories
    unused_seconds: float = 0.0
    max_bytes: int = 0

    @classmethod
    def from_settings(cls, proxy: ProxySettings) -> EvictionPolicy | None:
        policy = cls(
            frozenset(u.name for u in proxy.upstreams),
            proxy.evict_unused_seconds,
            proxy.max_bytes,
        )
        return policy if policy.upstreams and (policy.unused_seconds or policy.max_bytes) else None

    def proxied(self, repository: str) -> bool:
        return repository.partition("/")[0] in self.upstreams

    def choose(
        self,
        candidates: set[Digest],
        inventory: Inventory,
        access: dict[Digest, float],
        now: float,
    ) -> set[Digest]:
        """The candidates (blobs only proxied repositories reference) to evict."""
        last: dict[Digest, float] = {}
        sizes: dict[Digest, int] = {}
        for digest in candidates:
            entry = inventory.blobs.get(digest)
            if entry is None or entry.data is None:
                continue
            last[digest] = max(access.get(digest, 0.0), entry.data.modified, entry.touched or 0.0)
            sizes[digest] = entry.data.size
        evict = set()
        if self.unused_seconds > 0:
            evict = {d for d, t in last.items() if t < now - self.unused_seconds}
        if self.max_bytes > 0:
            remaining = sorted((d for d in last if d not in evict), key=lambda d: (last[d], str(d)))
            total = sum(sizes[d] for d in remaining)
            for digest in remaining:  # least recently used first
                if total <= self.max_bytes:
                    break
                evict.add(digest)
                total -= sizes[digest]
        return evict


async def last_access(driver: StorageDriver) -> dict[Digest, float]:
    """Every access record's time, by digest."""
    found: dict[Digest, float] = {}
    try:
        async for info in driver.walk(paths.ACCESS_ROOT):
            algorithm, hex_ = info.key.rsplit("/", 2)[-2:]
            try:
                found[Digest.parse(f"{algorithm}:{hex_}")] = info.modified
            except DigestInvalid:
                continue
    except PathNotFound:
        pass
    return found


__all__ = ["EvictionPolicy", "last_access"]
