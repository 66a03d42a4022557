"""Manifests of proxied repositories: by digest stored once and never revalidated; by tag
served from storage while fresh (``tag_ttl_seconds``, measured from the tag link's last write),
then revalidated with a HEAD (a GET only when the digest moved). When the upstream fails, a
stored tag is served stale (logged and counted); what was never stored gets the upstream's
error (502/503/504)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from ..registry.digest import Digest
from ..registry.errors import (
    Denied,
    ManifestUnknown,
    RegistryError,
    UpstreamInvalid,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ..registry.manifest_store import ManifestStore, StoredManifest
from ..registry.names import is_digest_reference, lookup_reference
from ..registry.notify import Notifier
from ..singleflight import SingleFlight
from ..storage import paths
from ..storage.driver import PathNotFound
from .client import FetchedManifest, UpstreamClient
from .events import fill_origin
from .metrics import HITS, MISSES, STALE
from .routing import Route

log = logging.getLogger("berth.proxy")

# Upstream failures after which cached content is served instead (not 404s or bad content).
OUTAGES = (UpstreamUnavailable, UpstreamTimeout)


def fill_refused(route: Route) -> Denied:
    return Denied(
        f"anonymous requests are served only what upstream {route.label} content is cached; "
        "log in to fetch from the upstream"
    )


class ManifestMirror:
    def __init__(self, store: ManifestStore, events: Notifier | None = None) -> None:
        self.store = store
        self.events = events
        self._flights: SingleFlight[tuple[str, str], StoredManifest] = SingleFlight()

    async def get(
        self, route: Route, client: UpstreamClient, name: str, reference: str, *, may_fill: bool
    ) -> StoredManifest:
        ref = lookup_reference(reference)
        if isinstance(ref, Digest):
            if await self.store.has_revision(name, ref):
                HITS.labels(route.label, "manifest").inc()
                return await self.store.load(ref)
            if not may_fill:
                raise fill_refused(route)
            return await self._flights.run(
                (name, str(ref)), lambda: self._fetch(route, client, name, str(ref), ref)
            )
        stored, age = await self._stored_tag(name, ref)
        if stored is not None and (age < route.upstream.tag_ttl_seconds or not may_fill):
            HITS.labels(route.label, "manifest").inc()
            return await self.store.load(stored)
        if not may_fill:
            raise fill_refused(route)
        return await self._flights.run(
            (name, ref), lambda: self._revalidate(route, client, name, ref, stored)
        )

    async def _stored_tag(self, name: str, tag: str) -> tuple[Digest | None, float]:
        """The stored tag's digest and seconds since it was last written (or validated)."""
        try:
            info, digest = await asyncio.gather(
                self.store.driver.stat(paths.tag_current_link(name, tag)),
                self.store.tags.resolve(name, tag),
            )
        except (PathNotFound, ManifestUnknown):
            return None, 0.0
        return digest, max(time.time() - info.modified, 0.0)

    async def _revalidate(
        self, route: Route, client: UpstreamClient, name: str, tag: str, stored: Digest | None
    ) -> StoredManifest:
        try:
            if stored is not None:
                current = await client.manifest_digest(route.remote, tag)
                if current == stored:
                    # Unchanged: rewriting the link restarts its TTL on every replica.
                    await self.store.tags.point(name, tag, stored)
                    HITS.labels(route.label, "manifest").inc()
                    return await self.store.load(stored)
            return await self._fetch(route, client, name, tag, None)
        except OUTAGES as exc:
            if stored is None:
                raise
            STALE.labels(route.label, "manifest").inc()
            log.warning(
                "upstream %s: serving stale tag %s:%s (%s)", route.label, name, tag, exc.message
            )
            return await self.store.load(stored)

    async def _fetch(
        self,
        route: Route,
        client: UpstreamClient,
        name: str,
        reference: str,
        expected: Digest | None,
    ) -> StoredManifest:
        fetched = await client.manifest(route.remote, reference)
        if fetched is None:
            raise ManifestUnknown(f"manifest unknown upstream {route.label}: {name}:{reference}")
        MISSES.labels(route.label, "manifest").inc()
        check = expected or fetched.digest
        if check is not None:
            actual = hashlib.new(check.algorithm, fetched.body).hexdigest()
            if actual != check.hex:
                raise client.fail(
                    "invalid",
                    UpstreamInvalid(
                        f"upstream {route.label}: manifest {route.remote}:{reference} does not "
                        f"match its digest {check}; not stored"
                    ),
                )
        return await self._store(route, client, name, reference, fetched)

    async def _store(
        self,
        route: Route,
        client: UpstreamClient,
        name: str,
        reference: str,
        fetched: FetchedManifest,
    ) -> StoredManifest:
        try:
            stored, _ = await self.store.put(
                name, reference, fetched.body, fetched.content_type, mirrored=True
            )
        except RegistryError as exc:
            if isinstance(exc, UpstreamInvalid) or exc.status >= 500:
                raise
            raise client.fail(
                "invalid",
                UpstreamInvalid(
                    f"upstream {route.label}: manifest {route.remote}:{reference} is unusable: "
                    f"{exc.message}; not stored"
                ),
            ) from None
        log.info("upstream %s: stored manifest %s:%s", route.label, name, reference)
        if self.events is not None:
            tags = [] if is_digest_reference(reference) else [reference]
            await self.events.manifest(
                "fill",
                name,
                stored.digest,
                len(stored.body),
                stored.manifest,
                tags,
                fill_origin(route.upstream),
            )
        return stored


__all__ = ["ManifestMirror", "fill_refused"]
