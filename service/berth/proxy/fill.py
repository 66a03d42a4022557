"""Blob fills: one upstream fetch per blob per replica, written to storage and hashed as it
arrives, streamed live to the request that started it, and committed only when the digest
verifies. A wrong or truncated upstream body never reaches the blob store.

The live stream holds back its last chunk until the blob is committed: a client never receives
a complete body that was not verified (a failed fill ends its response early instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator

import aiohttp

from ..registry.digest import Digest
from ..registry.errors import BlobUnknown, UpstreamInvalid
from ..registry.notify import Notifier
from ..registry.uploads import Uploads
from ..storage import paths
from ..storage.driver import AlreadyExists, FileWriter, PathNotFound
from .client import UpstreamClient
from .events import fill_origin
from .metrics import UPSTREAM_BYTES

log = logging.getLogger("berth.proxy")

CHUNK = 1024 * 1024  # bytes per write+hash step (bounded memory per fill)
LIVE_DEPTH = 8  # chunks queued for the live client before the fill waits for it
CLAIM_POLL_SECONDS = 0.25  # how often a replica waiting on another's fill looks for the blob


class Fill:
    """One blob's fetch into storage, as a task; ``headers`` resolves to the upstream's
    Content-Length (None: not sent) once the upstream answered."""

    def __init__(
        self,
        client: UpstreamClient,
        uploads: Uploads,
        name: str,
        remote: str,
        digest: Digest,
        *,
        live: bool,
        claim_wait: float = 0.0,
        events: Notifier | None = None,
    ) -> None:
        self.client = client
        self.events = events
        self.uploads = uploads
        self.claim_wait = claim_wait
        self._claim = paths.fill_claim(digest)
        self._holding = False
        self.name = name
        self.remote = remote
        self.digest = digest
        self.headers: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._live: asyncio.Queue[bytes | None] | None = asyncio.Queue(LIVE_DEPTH) if live else None
        self._taken = False
        self._background: asyncio.Future[None] | None = None
        self.task: asyncio.Task[int] = asyncio.ensure_future(self._run())

    @property
    def what(self) -> str:
        return f"blob {self.remote}@{self.digest}"

    async def _run(self) -> int:
        try:
            stored = await self._wait_for_other_replica() if self.claim_wait > 0 else None
            if stored is not None:
                self.headers.set_result(None)  # no live body: served from storage
                return stored
            async with self.client.blob(self.remote, self.digest) as response:
                if response is None:
                    raise BlobUnknown(f"blob unknown upstream {self.client.name}: {self.digest}")
                expected = response.content_length
                self.headers.set_result(expected)
                session = await self.uploads.start(self.name)
                writer = await self.uploads.open_data(self.name, session.upload_id)
                try:
                    size = await self._copy(response, writer, expected)
                    await writer.commit()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await writer.cancel()
                    with contextlib.suppress(Exception):
                        await self.uploads.cancel(self.name, session.upload_id)
                    raise
            size = await self.uploads.adopt(self.name, session.upload_id, self.digest, size)
            log.info("upstream %s: stored %s (%d bytes)", self.client.name, self.what, size)
            if self.events is not None:  # this replica fetched it (not a wait on another's)
                origin = fill_origin(self.client.settings)
                await self.events.blob("fill", self.name, self.digest, size, origin)
            return size
        except BaseException as exc:
            if not self.headers.done():
                if isinstance(exc, asyncio.CancelledError):
                    self.headers.cancel()
                else:
                    self.headers.set_exception(exc)
                    self.headers.exception()  # the fill's own error; waiters see it via ``task``
            raise
        finally:
            self._end_live()
            if self._holding:
                with contextlib.suppress(Exception):
                    await self.uploads.driver.delete(self._claim, prune=False)

    async def _wait_for_other_replica(self) -> int | None:
        """Take the blob's claim in storage, or wait (bounded) while another replica holds it.

        Returns the size once the other replica stored the blob; None when this fill is to
        fetch it (holding the claim, or after the claim was abandoned or waited out).
        """
        driver, blobs = self.uploads.driver, self.uploads.blobs
        deadline = time.monotonic() + self.claim_wait
        while True:
            try:
                await driver.create(self._claim, self.digest.hex.encode())
                self._holding = True
            except AlreadyExists:
                pass
            # Also after taking the claim: a fill stores the blob before it releases its claim.
            size = await blobs.fresh_size(self.digest)
            if size is not None or self._holding:
                return size
            try:
                age = time.time() - (await driver.stat(self._claim)).modified
            except PathNotFound:
                continue  # released (that fill failed): claim it ourselves
            if age > self.claim_wait:  # its replica died mid-fill
                await driver.delete(self._claim, prune=False)
                continue
            if time.monotonic() > deadline:
                log.warning(
                    "upstream %s: %s: waited out another replica", self.client.name, self.what
                )
                return None
            await asyncio.sleep(CLAIM_POLL_SECONDS)

    async def _copy(
        self, response: aiohttp.ClientResponse, writer: FileWriter, expected: int | None
    ) -> int:
        hasher = hashlib.new(self.digest.algorithm)
        seen = 0
        buffer = bytearray()
        try:
            async for chunk in response.content.iter_chunked(CHUNK):
                seen += len(chunk)
                if expected is not None and seen > expected:
                    raise self._invalid("longer than its Content-Length")
                buffer += chunk
                if len(buffer) >= CHUNK:
                    await self._step(writer, hasher, bytes(buffer))
                    buffer.clear()
            if buffer:
                await self._step(writer, hasher, bytes(buffer))
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self.client.transport_error(exc, self.what) from None
        if expected is not None and seen != expected:
            raise self._invalid(f"truncated at {seen} of {expected} bytes")
        if hasher.hexdigest() != self.digest.hex:
            raise self._invalid("content does not match its digest")
        return seen

    async def _step(self, writer: FileWriter, hasher: hashlib._Hash, data: bytes) -> None:
        await asyncio.gather(asyncio.to_thread(hasher.update, data), writer.write(data))
        UPSTREAM_BYTES.labels(self.client.name).inc(len(data))
        await self._publish(data)

    def _invalid(self, problem: str) -> UpstreamInvalid:
        error = UpstreamInvalid(f"upstream {self.client.name}: {self.what}: {problem}; not stored")
        self.client.fail("invalid", error)
        return error

    async def _publish(self, data: bytes | None) -> None:
        queue = self._live
        if queue is None:
            return
        try:
            # A client that stops reading must not stall the fill others wait for.
            await asyncio.wait_for(queue.put(data), self.client.settings.read_timeout_seconds)
        except TimeoutError:
            self._live = None

    def _end_live(self) -> None:
        """Tell the live client the body is complete (or failed: it then awaits ``task``),
        without ever waiting for it here."""
        queue = self._live
        if queue is None:
            return
        try:
            queue.put_nowait(None)
        except asyncio.QueueFull:  # it is behind: the marker follows once it has read on
            marker = asyncio.ensure_future(self._publish(None))
            self._background = marker  # keep a reference until it is done

    def stream(self) -> AsyncIterator[bytes] | None:
        """The live body, for the one request that started the fill (None for the others)."""
        if self._live is None or self._taken:
            return None
        self._taken = True
        return self._stream(self._live)

    def decline_live(self) -> None:
        """Nobody will take the live body (the upstream sent no size to announce)."""
        if self._live is not None and not self._taken:
            self._taken = True
            queue, self._live = self._live, None
            while not queue.empty():
                queue.get_nowait()

    async def _stream(self, queue: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes]:
        held: bytes | None = None
        try:
            while (item := await queue.get()) is not None:
                if held is not None:
                    yield held
                held = item
            await asyncio.shield(self.task)  # raises when the fill failed: the body ends short
            if held is not None:
                yield held
        finally:
            self._live = None
            while not queue.empty():  # unblock a fill waiting to hand us a chunk
                queue.get_nowait()


class Fills:
    """The fills running in this process, by digest."""

    def __init__(
        self, uploads: Uploads, claim_wait: float = 0.0, events: Notifier | None = None
    ) -> None:
        self._running: dict[Digest, Fill] = {}
        self.uploads = uploads
        self.claim_wait = claim_wait
        self.events = events

    def running(self, digest: Digest) -> Fill | None:
        return self._running.get(digest)

    def join(
        self, client: UpstreamClient, name: str, remote: str, digest: Digest, *, live: bool
    ) -> Fill:
        """The blob's running fill, or a new one (``live``: its starter takes the body)."""
        fill = self._running.get(digest)
        if fill is not None:
            return fill
        fill = Fill(
            client,
            self.uploads,
            name,
            remote,
            digest,
            live=live,
            claim_wait=self.claim_wait,
            events=self.events,
        )
        self._running[digest] = fill

        def done(task: asyncio.Task[int]) -> None:
            if self._running.get(digest) is fill:
                del self._running[digest]
            with contextlib.suppress(asyncio.CancelledError):
                task.exception()  # reported to the waiters; never "never retrieved"

        fill.task.add_done_callback(done)
        return fill

    async def close(self) -> None:
        fills = list(self._running.values())
        for fill in fills:
            fill.task.cancel()
        await asyncio.gather(*(f.task for f in fills), return_exceptions=True)


__all__ = ["Fill", "Fills"]
