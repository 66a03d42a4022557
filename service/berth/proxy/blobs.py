"""Blobs of proxied repositories: served like any other once linked; otherwise confirmed or
fetched upstream, one fill per blob per process (the others wait for it and are then served
from storage)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..registry.blobs import BlobStore
from ..registry.digest import Digest
from ..registry.errors import BlobUnknown
from ..registry.notify import Notifier
from ..registry.uploads import Uploads
from .client import UpstreamClient
from .fill import Fills
from .manifests import fill_refused
from .metrics import HITS, MISSES
from .routing import Route


@dataclass(frozen=True, slots=True)
class BlobAnswer:
    size: int
    live: AsyncIterator[bytes] | None = None  # the body as it arrives; None: serve from storage


class BlobMirror:
    def __init__(
        self,
        blobs: BlobStore,
        uploads: Uploads,
        claim_wait: float = 0.0,
        events: Notifier | None = None,
    ) -> None:
        self.blobs = blobs
        self.fills = Fills(uploads, claim_wait, events)

    async def get(
        self,
        route: Route,
        client: UpstreamClient,
        name: str,
        digest: Digest,
        *,
        body: bool,
        may_fill: bool,
    ) -> BlobAnswer:
        """The blob's size, and for a GET that started a fill its live body."""
        for _ in range(2):  # a second round after waiting on another repository's fill
            try:
                size = await self.blobs.size_in(name, digest)
            except BlobUnknown:
                pass
            else:
                HITS.labels(route.label, "blob").inc()
                return BlobAnswer(size)
            if not may_fill:
                raise fill_refused(route)
            answer = await self._miss(route, client, name, digest, body=body)
            if answer is not None:
                return answer
        raise BlobUnknown(f"blob unknown to repository {name}: {digest}")

    async def _miss(
        self, route: Route, client: UpstreamClient, name: str, digest: Digest, *, body: bool
    ) -> BlobAnswer | None:
        running = self.fills.running(digest)
        if running is None:
            upstream_size: int | None = None
            stored = await self.blobs.exists(digest)
            if stored or not body:
                upstream_size = await client.blob_size(route.remote, digest)
            if upstream_size is not None:
                if stored and await self.blobs.reserve(digest) is not None:
                    # The content is here already (another repository): the upstream only
                    # confirms it belongs to this one.
                    await self.blobs.link(name, digest)
                    HITS.labels(route.label, "blob").inc()
                    return BlobAnswer(await self.blobs.size(digest))
                if not body:
                    return BlobAnswer(upstream_size)
            # A HEAD the upstream answered 404 goes on with a GET all the same: a chained
            # cache fetches a blob only on GET (Distribution issue 4747).
        fill = self.fills.join(client, name, route.remote, digest, live=body)
        expected = await asyncio.shield(fill.headers)
        if not body and expected is not None:
            return BlobAnswer(expected)
        if body and expected is not None:
            live = fill.stream()
            if live is not None:  # this request started the fill
                MISSES.labels(route.label, "blob").inc()
                return BlobAnswer(expected, live)
        fill.decline_live()  # no size to announce: everyone is served from storage
        await asyncio.shield(fill.task)
        return None  # stored now: the caller looks again (and links it for its repository)


__all__ = ["BlobAnswer", "BlobMirror"]
