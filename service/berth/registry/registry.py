"""The registry: the spec's rules, free of HTTP, over one storage driver."""

from __future__ import annotations

from typing import Any

from ..config import Settings
from ..events.model import Origin
from ..events.recorder import Recorder, build_recorder
from ..proxy.blobs import BlobAnswer
from ..proxy.cache import PullThroughCache
from ..proxy.routing import Route
from ..storage.driver import StorageDriver
from . import catalog
from .blobs import BlobStore
from .digest import Digest
from .errors import RegistryError, Unsupported
from .freshness import Generation
from .manifest_store import ManifestStore, StoredManifest
from .names import validate_name
from .notify import Notifier
from .referrers import Referrers
from .tags import Tags
from .uploads import Uploads


class Registry:
    def __init__(
        self, driver: StorageDriver, settings: Settings, generation: Generation | None = None
    ) -> None:
        """``generation``: shared by the worker processes of one server (see freshness.py)."""
        self.driver = driver
        self.settings = settings
        cache = settings.cache
        # None without endpoints: every write checks it first, so events cost nothing then.
        self.recorder: Recorder | None = build_recorder(driver, settings.notifications)
        self.events = Notifier(self.recorder) if self.recorder is not None else None
        self.blobs = BlobStore(
            driver,
            cache.blob_descriptors,
            link_staleness=cache.link_staleness_seconds,
            redirect_reuse=cache.redirect_reuse_fraction,
            generation=generation,
            reservation_reuse=cache.reservation_reuse_seconds,
            events=self.events,
            gc_lease_staleness=cache.gc_lease_staleness_seconds,
        )
        self.tags = Tags(driver)
        self.manifests = ManifestStore(
            driver,
            self.blobs,
            self.tags,
            settings.cache.manifest_bytes,
            allow_sparse=settings.validation.manifests.allow_sparse,
            events=self.events,
        )
        self.uploads = Uploads(driver, self.blobs, events=self.events)
        self.referrers = Referrers(driver, self.manifests, settings.cache.blob_descriptors)
        self.proxy: PullThroughCache | None = None
        if settings.proxy.upstreams:
            self.proxy = PullThroughCache(
                settings.proxy,
                blobs=self.blobs,
                manifests=self.manifests,
                tags=self.tags,
                uploads=self.uploads,
                referrers=self.referrers,
                max_manifest_bytes=settings.limits.max_manifest_bytes,
                events=self.events,
            )

    # Guards shared by every write path.
    def check_writable(self) -> None:
        if self.settings.storage.read_only:
            raise Unsupported("the registry is in read-only mode")

    def check_push(self, name: str) -> None:
        """Writes into a repository: refused when read-only, or in a proxied namespace."""
        self.check_writable()
        if self.proxy is not None:
            self.proxy.check_push(name)

    def check_delete(self) -> None:
        self.check_writable()
        if not self.settings.storage.delete_enabled:
            raise Unsupported("deletion is disabled on this registry")

    @staticmethod
    def name(name: str) -> str:
        return validate_name(name)

    async def mount(
        self, name: str, digest: Digest, source: str | None, origin: Origin | None = None
    ) -> bool:
        """Cross-repository mount. True when ``digest`` is now linked into ``name``.

        With ``source``, the blob must be readable from that repository; without it, any blob
        present in storage is mounted (automatic content discovery).
        """
        if source is not None:
            try:
                validate_name(source)
            except RegistryError:
                return False
            # Whether the source may serve the blob is a read, trusted within the staleness
            # bound as every read is (a client mounts what it just saw there); what the mount
            # relies on, the blob itself, is reserved below.
            if not await self.blobs.is_linked(source, digest):
                return False
        # Reserved (not the cached exists()): fresh, and safe against a concurrent GC.
        size = await self.blobs.reserve_and_link(name, digest)
        if size is None:
            return False
        if self.events is not None:
            await self.events.blob("mount", name, digest, size, origin, source)
        return True

    def _proxied(self, name: str) -> tuple[PullThroughCache, Route] | None:
        if self.proxy is None:
            return None
        route = self.proxy.route(name)
        return None if route is None else (self.proxy, route)

    # Reads: a proxied repository's go through the pull-through cache, the rest to storage.
    # ``anonymous``: whether the caller is not logged in (who may cause upstream fetches).
    async def manifest(self, name: str, reference: str, *, anonymous: bool) -> StoredManifest:
        routed = self._proxied(name)
        if routed is None:
            return await self.manifests.get(name, reference)
        proxy, route = routed
        return await proxy.manifest(route, name, reference, anonymous=anonymous)

    async def blob(self, name: str, digest: Digest, *, body: bool, anonymous: bool) -> BlobAnswer:
        """A blob's size, and its live body while a pull-through fill streams it."""
        routed = self._proxied(name)
        if routed is None:
            return BlobAnswer(await self.blobs.size_in(name, digest))
        proxy, route = routed
        return await proxy.blob(route, name, digest, body=body, anonymous=anonymous)

    async def tag_list(self, name: str, *, anonymous: bool) -> list[str]:
        routed = self._proxied(name)
        if routed is None:
            return await self.tags.all(name)
        proxy, route = routed
        return await proxy.tags(route, name, anonymous=anonymous)

    async def referrers_of(
        self, name: str, subject: Digest, artifact_type: str | None, *, anonymous: bool
    ) -> list[dict[str, Any]]:
        routed = self._proxied(name)
        if routed is None:
            return await self.referrers.find(name, subject, artifact_type)
        proxy, route = routed
        return await proxy.referrers(route, name, subject, artifact_type, anonymous=anonymous)

    async def catalog(self) -> list[str]:
        return await catalog.repositories(self.driver)

    async def close(self) -> None:
        if self.proxy is not None:
            await self.proxy.close()
        await self.driver.close()
