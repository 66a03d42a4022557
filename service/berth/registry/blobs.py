"""Blobs: global content by digest, and each repository's links to it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from ..events.model import Origin
from ..storage import paths
from ..storage.driver import PathNotFound, StorageDriver, StorageUnavailable
from .cache import LRUCache
from .digest import Digest
from .errors import BlobUnknown
from .freshness import Generation, PresenceCache
from .gc_quiet import GCQuiet

if TYPE_CHECKING:
    from .notify import Notifier

# A GC run never issues a delete more than TOMBSTONE_DEADLINE_SECONDS after writing its tombstone
# (berth.gc.sweep); writers treat older tombstones as abandoned. The gap covers request timeouts.
TOMBSTONE_DEADLINE_SECONDS = 30.0
TOMBSTONE_STALE_SECONDS = 120.0
RESERVE_ATTEMPTS = 10


class Alongside:
    """A step a write takes right after reserving a blob (reading or writing the repository's
    link), sent alongside the reservation's mark when gc_quiet already knows that no GC can
    remove anything before both complete: one round trip for both (docs/gc.md). ``counts``:
    it did, and its result stands as if it had run after the reservation; otherwise the
    caller runs it after, as usual (``started``: it ran all the same, a write the caller may
    have to take back)."""

    def __init__(self, step: Callable[[], Awaitable[object]]) -> None:
        self._step = step
        self.started = False
        self.counts = False
        self.result: object = None

    async def run(self) -> None:
        self.started = True
        self.result = await self._step()


class BlobStore:
    def __init__(
        self,
        driver: StorageDriver,
        cache_entries: int,
        link_staleness: float = 0.0,
        redirect_reuse: float = 0.0,
        generation: Generation | None = None,
        reservation_reuse: float = 0.0,
        events: Notifier | None = None,
        gc_lease_staleness: float = 0.0,
    ) -> None:
        self.driver = driver
        # No GC lease seen lately: a reservation needs no tombstone listing (gc_quiet.py).
        self.gc_quiet = GCQuiet(driver, gc_lease_staleness)
        self.events = events
        # digest → size; a blob's content never changes, only whether it exists (GC).
        self._sizes: LRUCache[Digest, int] = LRUCache(cache_entries)
        # Link keys seen present, trusted for ``link_staleness`` seconds (see freshness.py).
        self.links = PresenceCache(link_staleness, cache_entries, generation)
        # digest → (URL, monotonic time it stops being handed out)
        self._urls: LRUCache[Digest, tuple[str, float]] = LRUCache(cache_entries)
        self._redirect_reuse = redirect_reuse
        # digest → monotonic time our last successful reservation wrote its mark. GC cut-offs
        # subtract the same window (cache.reservation_reuse_seconds), so a reservation this
        # recent protects as well as a fresh one (docs/gc.md, "Reserving cheaply").
        self._reserved: LRUCache[Digest, float] = LRUCache(cache_entries)
        self._reservation_reuse = reservation_reuse

    async def has_link(self, key: str, *, fresh: bool = False) -> bool:
        """Whether the link object ``key`` exists: from the presence cache unless ``fresh``
        (writes check fresh; reads accept the staleness bound)."""
        if not fresh and self.links.fresh(key):
            return True
        sent = time.monotonic()
        try:
            await self.driver.stat(key)
        except PathNotFound:
            self.links.discard(key)
            return False
        self.links.remember(key, sent)
        return True

    async def size(self, digest: Digest) -> int:
        """Size of the blob in global storage; BLOB_UNKNOWN when absent."""
        cached = self._sizes.get(digest)
        if cached is not None:
            return cached
        sent = time.monotonic()
        try:
            info = await self.driver.stat(paths.blob_data(digest))
        except PathNotFound:
            raise BlobUnknown(f"blob unknown: {digest}") from None
        self._seen_size(digest, info.size, sent)
        return info.size

    def _seen_size(self, digest: Digest, size: int, sent: float) -> None:
        """The blob is there with ``size``, as a request sent at ``sent`` saw: remembered in
        this process, and for the other workers (within the link bound) with the data's key."""
        self._sizes.put(digest, size)
        self.links.share(paths.blob_data(digest), sent, size)

    async def exists(self, digest: Digest) -> bool:
        try:
            await self.size(digest)
        except BlobUnknown:
            return False
        return True

    def forget(self, digest: Digest) -> None:
        self._sizes.discard(digest)
        self._reserved.discard(digest)
        self.links.discard(paths.blob_data(digest))

    def _recently_reserved(self, digest: Digest) -> int | None:
        """Size of a blob this process reserved within the reuse window, else None."""
        if self._reservation_reuse <= 0:
            return None
        marked = self._reserved.get(digest)
        if marked is None or time.monotonic() - marked > self._reservation_reuse:
            return None
        return self._sizes.get(digest)

    def _reserved_now(self, digest: Digest, size: int, marked: float) -> None:
        self._seen_size(digest, size, marked)
        self._reserved.put(digest, marked)

    def _reserved_as(self, digest: Digest, size: int | None, marked: float) -> int | None:
        """The outcome of a reservation whose mark was sent at ``marked``: remembered when the
        blob is there, forgotten when it is not."""
        if size is None:
            self.forget(digest)
        else:
            self._reserved_now(digest, size, marked)
        return size

    async def reserve(
        self,
        digest: Digest,
        *,
        touch_absent: bool = False,
        alongside: Alongside | None = None,
    ) -> int | None:
        """Size of the blob, read fresh (never the size cache), guaranteed to survive a
        concurrent GC; or that of a reservation this process made within
        ``cache.reservation_reuse_seconds``, which GC cut-offs allow for.

        The writer half of the GC handshake (docs/gc.md): rewrite the blob's ``touch`` object,
        then look for GC tombstones. A GC run writes its tombstone before its final re-check of
        ``touch``, so either that GC sees this touch and keeps the blob (and its links), or we
        see its tombstone and wait until it is done. Call it before writing anything that
        refers to the blob (a link, a manifest revision); None means the blob is absent.

        An absent blob is reported without writing anything, unless ``touch_absent`` (a writer
        about to put the blob there) or this process saw it present lately (then a GC may have
        removed it since, and its ``touch`` stays for the next GC run): a request naming
        digests never seen (a manifest, a mount) must leave no ``touch`` behind, or every
        failed request could create directories.

        ``alongside``: the step that follows, sent with the mark when it safely can (never for
        a digest not known present, nor when a recent reservation is reused).
        """
        recent = self._recently_reserved(digest)
        if recent is not None:
            return recent
        if touch_absent or self._sizes.get(digest) is not None:
            # A writer about to put the blob there, or one seen present lately (a HEAD, an
            # earlier push): touch at once, reading the size alongside. If a GC removed a blob
            # seen lately, a ``touch`` stays behind (as after an interrupted write) for the
            # next GC run to remove; a digest never seen still gets nothing written.
            return await self._reserve_touching(digest, alongside)
        read_at = time.monotonic()
        known = await self.fresh_size(digest)
        if known is None:
            self.forget(digest)
            return None

        async def touch() -> int | None:
            # Content never changes, so only whether ``data`` still exists (in the listing
            # that shows tombstones) needs reading after the touch.
            await self.driver.put(paths.blob_touch(digest), b"")
            return known

        # No GC was running when ``known`` was read (read_at), nor can one remove it now.
        return await self._handshake(
            digest, paths.blob_touch(digest), touch, since=read_at, alongside=alongside
        )

    async def _reserve_touching(
        self, digest: Digest, alongside: Alongside | None = None
    ) -> int | None:
        """``reserve`` starting with the touch: the size is read with it (after it, the
        listing for tombstones, unless no GC can be running: gc_quiet.py)."""

        async def touch() -> int | None:
            # Read alongside the touch: a GC that could remove the blob meanwhile is one whose
            # tombstone the listing shows, or one gc_quiet rules out.
            _, size = await asyncio.gather(
                self.driver.put(paths.blob_touch(digest), b""), self.fresh_size(digest)
            )
            return size

        return await self._handshake(digest, paths.blob_touch(digest), touch, alongside=alongside)

    async def reserve_and_link(self, name: str, digest: Digest) -> int | None:
        """``reserve(digest)``, then link the blob into ``name`` (a mount). None, and no link
        left, when the blob is absent. A reservation that fails leaves a link sent alongside
        in place: it names a blob seen present (the repository may have linked it before), and
        GC removes a layer link together with its blob if nothing keeps that."""
        linking = Alongside(lambda: self.link(name, digest))
        size = await self.reserve(digest, alongside=linking)
        if size is None:
            if linking.started:  # the blob is gone: the link sent alongside points at nothing
                key = paths.layer_link(name, digest)
                self.links.forget(key)
                with contextlib.suppress(PathNotFound):
                    await self.driver.delete(key)
            return None
        if not linking.counts:
            await self.link(name, digest)  # after the reservation, as the handshake requires
        return size

    async def reserve_linked(self, name: str, digest: Digest) -> tuple[int | None, bool]:
        """``reserve(digest)``, then whether ``name`` may serve the blob
        (``is_linked_after_reserve``), as a manifest PUT checks what it references; the layer
        link is read alongside the reservation's mark when it safely can."""
        reading = Alongside(lambda: self.has_link(paths.layer_link(name, digest), fresh=True))
        size = await self.reserve(digest, alongside=reading)
        if size is None:
            return None, False
        if reading.counts and reading.result:
            return size, True
        return size, await self.is_linked_after_reserve(name, digest)

    async def _handshake(
        self,
        digest: Digest,
        marked_key: str,
        mark: Callable[[], Awaitable[int | None]],
        since: float | None = None,
        *,
        rewrite_absent: bool = False,
        alongside: Alongside | None = None,
    ) -> int | None:
        """The writer half of the GC handshake: ``mark`` writes ``marked_key`` (and says the
        blob's size, None: absent), then the blob's directory is listed for tombstones unless
        gc_quiet rules a GC out (the reservation's first request was sent at ``since``, default
        the mark's). A live tombstone: back off and mark again. ``data`` missing from the
        listing means absent; with ``rewrite_absent`` (the mark writes ``data`` itself) it means
        a GC removed it just now: mark again. The outcome is remembered (``_reserved_as``).

        ``alongside`` is sent with the first mark when gc_quiet predicts the listing will not be
        needed, and counts if it is not: no GC removes anything between the reservation's first
        request and the completion of both (gc_quiet.py), so what it read or wrote is as good
        as after the mark."""
        for attempt in range(RESERVE_ATTEMPTS):
            marked = time.monotonic()
            first = marked if since is None else since
            together = alongside if attempt == 0 and self.gc_quiet.predicts(first) else None
            if together is not None:
                size = await _with(mark(), together.run())
            else:
                size = await mark()
            if self.gc_quiet.covers(first, time.monotonic()):
                if together is not None:
                    together.counts = True
                return self._reserved_as(digest, size, marked)
            names = await self._list_blob_dir(digest)
            if paths.BLOB_DATA not in names:
                size = None
            busy = await self._gc_in_progress(digest, names, marked_key)
            if not busy and (size is not None or not rewrite_absent):
                return self._reserved_as(digest, size, marked)
            await _back_off(attempt)
        raise _being_collected(digest)

    async def _gc_in_progress(self, digest: Digest, names: list[str], marked_key: str) -> bool:
        """Whether a live GC tombstone is among ``names``, listed after writing ``marked_key``
        (a tombstone far older than that write belongs to a GC that died or gave up)."""
        tombstones = [n for n in names if n.startswith(paths.TOMBSTONE_PREFIX)]
        return bool(tombstones) and not await self._tombstones_stale(digest, tombstones, marked_key)

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

    async def _tombstones_stale(self, digest: Digest, names: list[str], marked_key: str) -> bool:
        try:
            touched = (await self.driver.stat(marked_key)).modified
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
        keys = (paths.layer_link(name, digest), paths.revision_link(name, digest))
        if not fresh and any(self.links.fresh(k) for k in keys):
            return True
        # Both asked at once: a blob the repository lacks (what a client's HEAD before each
        # upload usually finds) costs one round trip instead of two.
        return any(await asyncio.gather(*(self.has_link(k, fresh=fresh) for k in keys)))

    async def is_linked_after_reserve(self, name: str, digest: Digest) -> bool:
        """``is_linked`` for a write, called after ``reserve(digest)`` succeeded. A layer link
        seen within the staleness bound by a request sent after the reservation's mark is
        trusted: from the mark on, GC cannot remove the link (it does so only together with
        the blob, which the reservation protects), so only a blob DELETE through another
        replica can have, seen within the bound as on every read. A link seen before the mark
        may belong to a blob that GC removed and someone pushed again since, so it is read
        again. A revision link is always read fresh: GC removes untagged revisions whose blob
        stays."""
        layer = paths.layer_link(name, digest)
        marked = self._reserved.get(digest)
        if marked is not None and self.links.fresh(layer, since=marked):
            return True
        if await self.has_link(layer, fresh=True):
            return True
        return await self.has_link(paths.revision_link(name, digest), fresh=True)

    async def size_in(self, name: str, digest: Digest) -> int:
        """Size of a blob the repository links to; BLOB_UNKNOWN otherwise."""
        cached = self._sizes.get(digest)
        if cached is None:
            cached = self.links.value(paths.blob_data(digest))  # what another worker saw
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
        sent = time.monotonic()
        await self.driver.put(key, str(digest).encode())
        self.links.remember(key, sent)

    async def unlink(self, name: str, digest: Digest, origin: Origin | None = None) -> None:
        key = paths.layer_link(name, digest)
        if not await self.has_link(key, fresh=True):
            raise BlobUnknown(f"blob unknown to repository {name}: {digest}")
        self.links.forget(key)  # this replica sees the delete at once
        await self.driver.delete(key)
        if self.events is not None:
            await self.events.blob("delete", name, digest, None, origin)

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
        """Store small content (a manifest, a blob under the single-request limit) by digest.

        Reserved like any blob a writer relies on, with the content itself as the mark: writing
        ``data`` (whose modification time GC re-checks like ``touch``) and then listing for
        tombstones is the handshake in two requests, where touch, listing and write took three
        (content never changes, so rewriting it is harmless).
        """
        if self._recently_reserved(digest) is not None:
            return
        key = paths.blob_data(digest)

        async def write() -> int | None:
            await self.driver.put(key, data)
            return len(data)

        # A GC unit removing this digest meanwhile: written again after it.
        await self._handshake(digest, key, write, rewrite_absent=True)


async def _with(mark: Awaitable[int | None], step: Awaitable[None]) -> int | None:
    """``mark``'s result, ``step`` awaited alongside it. Both run to the end (no request left
    running unseen), then ``mark``'s failure, or else ``step``'s, is raised."""
    size, other = await asyncio.gather(mark, step, return_exceptions=True)
    if isinstance(size, BaseException):
        raise size
    if isinstance(other, BaseException):
        raise other
    return size


async def _back_off(attempt: int) -> None:
    await asyncio.sleep(min(0.05 * 2**attempt, 2.0))


def _being_collected(digest: Digest) -> StorageUnavailable:
    return StorageUnavailable(f"blob {digest} is being garbage-collected; retry")
