"""Tag lists and referrers of proxied repositories: asked of the upstream, kept in process for
the upstream's ``tag_ttl_seconds``, served stale (or from what is stored) when it fails."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ..registry.cache import LRUCache
from ..registry.digest import Digest
from ..registry.errors import NameUnknown, UpstreamInvalid
from ..registry.referrers import Referrers
from ..registry.tags import Tags
from ..singleflight import SingleFlight
from .client import UpstreamClient
from .manifests import OUTAGES
from .metrics import HITS, MISSES, STALE
from .routing import Route

log = logging.getLogger("berth.proxy")

MAX_TAG_PAGES = 100
LIST_CACHE_ENTRIES = 10_000
T = TypeVar("T")


def next_page(link: str | None) -> str | None:
    """The path and query of a ``Link: <...>; rel="next"`` header (the upstream's own origin)."""
    if not link or 'rel="next"' not in link:
        return None
    target = link.split(";", 1)[0].strip().strip("<>")
    parts = urlsplit(target)
    if not parts.path.startswith("/v2/"):
        return None
    return parts.path + (f"?{parts.query}" if parts.query else "")


class ListingMirror:
    def __init__(self, tags: Tags, referrers: Referrers) -> None:
        self.tags_store = tags
        self.referrers_store = referrers
        self._cache: LRUCache[tuple[str, str], tuple[float, Any]] = LRUCache(LIST_CACHE_ENTRIES)
        self._flights: SingleFlight[tuple[str, str], Any] = SingleFlight()

    async def _cached(
        self,
        route: Route,
        key: tuple[str, str],
        fetch: Callable[[], Awaitable[T]],
        stored: Callable[[], Awaitable[T]],
        *,
        may_fill: bool,
    ) -> T:
        entry = self._cache.get(key)
        if entry is not None and (entry[0] > time.monotonic() or not may_fill):
            HITS.labels(route.label, key[0]).inc()
            result: T = entry[1]
            return result
        if not may_fill:
            return await stored()
        try:
            result = await self._flights.run(key, fetch)
        except OUTAGES as exc:
            STALE.labels(route.label, key[0]).inc()
            log.warning("upstream %s: serving stored %s of %s (%s)", route.label, *key, exc.message)
            return entry[1] if entry is not None else await stored()
        MISSES.labels(route.label, key[0]).inc()
        self._cache.put(key, (time.monotonic() + route.upstream.tag_ttl_seconds, result))
        return result

    async def tags(
        self, route: Route, client: UpstreamClient, name: str, *, may_fill: bool
    ) -> list[str]:
        async def fetch() -> list[str]:
            found: set[str] = set()
            path: str | None = f"/v2/{route.remote}/tags/list?n=1000"
            for _ in range(MAX_TAG_PAGES):
                if path is None:
                    break
                got = await client.json(path, route.remote, f"tags of {route.remote}")
                if got is None:
                    raise NameUnknown(f"repository unknown upstream {route.label}: {name}")
                document, link = got
                page = document.get("tags") if isinstance(document, dict) else None
                if page is not None and not (
                    isinstance(page, list) and all(isinstance(t, str) for t in page)
                ):
                    raise client.fail(
                        "invalid", UpstreamInvalid(f"upstream {route.label}: bad tag list")
                    )
                found.update(page or [])
                path = next_page(link)
            return sorted(found)

        return await self._cached(
            route, ("tags", name), fetch, lambda: self.tags_store.all(name), may_fill=may_fill
        )

    async def referrers(
        self,
        route: Route,
        client: UpstreamClient,
        name: str,
        subject: Digest,
        artifact_type: str | None,
        *,
        may_fill: bool,
    ) -> list[dict[str, Any]]:
        async def stored() -> list[dict[str, Any]]:
            return await self.referrers_store.find(name, subject)

        async def fetch() -> list[dict[str, Any]]:
            path = f"/v2/{route.remote}/referrers/{subject}"
            got = await client.json(path, route.remote, f"referrers of {route.remote}@{subject}")
            if got is None:  # no referrers API upstream: what is stored is all there is
                return await stored()
            document, _ = got
            entries = document.get("manifests") if isinstance(document, dict) else None
            if not isinstance(entries, list):
                raise client.fail(
                    "invalid", UpstreamInvalid(f"upstream {route.label}: bad referrers index")
                )
            return [e for e in entries if _descriptor(e)]

        found: list[dict[str, Any]] = await self._cached(
            route, ("referrers", f"{name}@{subject}"), fetch, stored, may_fill=may_fill
        )
        if artifact_type is None:
            return found
        return [d for d in found if d.get("artifactType") == artifact_type]


def _descriptor(entry: object) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("mediaType"), str)
        and isinstance(entry.get("digest"), str)
        and isinstance(entry.get("size"), int)
    )


__all__ = ["ListingMirror", "next_page"]
