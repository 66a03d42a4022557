"""The pull-through cache as the registry sees it: one object answering reads of proxied
repositories (manifests, blobs, tag lists, referrers) and refusing writes into them."""

from __future__ import annotations

import asyncio
from typing import Any

from ..config import ProxySettings
from ..registry.blobs import BlobStore
from ..registry.digest import Digest
from ..registry.errors import Unsupported
from ..registry.manifest_store import ManifestStore, StoredManifest
from ..registry.notify import Notifier
from ..registry.referrers import Referrers
from ..registry.tags import Tags
from ..registry.uploads import Uploads
from .access import AccessRecorder
from .blobs import BlobAnswer, BlobMirror
from .client import UpstreamClient
from .listing import ListingMirror
from .manifests import ManifestMirror
from .routing import Route, Routing


class PullThroughCache:
    def __init__(
        self,
        settings: ProxySettings,
        *,
        blobs: BlobStore,
        manifests: ManifestStore,
        tags: Tags,
        uploads: Uploads,
        referrers: Referrers,
        max_manifest_bytes: int,
        events: Notifier | None = None,
    ) -> None:
        """``events``: where what this replica fetches from an upstream is recorded (``fill``)."""
        self.routing = Routing(settings.upstreams)
        self.clients = {u.name: UpstreamClient(u, max_manifest_bytes) for u in settings.upstreams}
        self._manifests = ManifestMirror(manifests, events)
        self.access = AccessRecorder(blobs.driver, settings.access_record_seconds)
        self._blobs = BlobMirror(blobs, uploads, settings.fill_claim_wait_seconds, events)
        self._listings = ListingMirror(tags, referrers)

    def route(self, name: str) -> Route | None:
        return self.routing.route(name)

    def check_push(self, name: str) -> None:
        if self.routing.proxied(name):
            upstream = name.partition("/")[0]
            raise Unsupported(
                f"{name!r} is in the namespace of the pull-through upstream {upstream!r}: "
                "it is read-only (push to a repository outside it)"
            )

    @staticmethod
    def may_fill(route: Route, anonymous: bool) -> bool:
        return not anonymous or route.upstream.anonymous_fill

    async def manifest(
        self, route: Route, name: str, reference: str, *, anonymous: bool
    ) -> StoredManifest:
        client = self.clients[route.label]
        return await self._manifests.get(
            route, client, name, reference, may_fill=self.may_fill(route, anonymous)
        )

    async def blob(
        self, route: Route, name: str, digest: Digest, *, body: bool, anonymous: bool
    ) -> BlobAnswer:
        client = self.clients[route.label]
        answer = await self._blobs.get(
            route, client, name, digest, body=body, may_fill=self.may_fill(route, anonymous)
        )
        self.access.note(digest)  # when it was last used, for eviction
        return answer

    async def tags(self, route: Route, name: str, *, anonymous: bool) -> list[str]:
        client = self.clients[route.label]
        return await self._listings.tags(
            route, client, name, may_fill=self.may_fill(route, anonymous)
        )

    async def referrers(
        self,
        route: Route,
        name: str,
        subject: Digest,
        artifact_type: str | None,
        *,
        anonymous: bool,
    ) -> list[dict[str, Any]]:
        client = self.clients[route.label]
        return await self._listings.referrers(
            route, client, name, subject, artifact_type, may_fill=self.may_fill(route, anonymous)
        )

    async def close(self) -> None:
        await self._blobs.fills.close()
        await self.access.close()
        await asyncio.gather(*(c.close() for c in self.clients.values()))


__all__ = ["PullThroughCache"]
