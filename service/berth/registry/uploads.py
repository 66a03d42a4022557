"""Upload sessions, kept entirely in storage so that any replica can continue any upload.

A session is ``_uploads/<id>/`` (Distribution's layout): ``data`` (the bytes so far, written
through the driver's appendable writer), ``startedat``, and ``hashstates/<alg>/<offset>``, the
saved hash state after ``offset`` bytes. Request bodies are streamed to storage in bounded
buffers while they are hashed; nothing holds a whole blob or chunk in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from ..events.model import Origin
from ..storage import paths
from ..storage.driver import FileWriter, PathNotFound, StorageDriver, WriterBusy
from .blobs import BlobStore
from .digest import Digest, Hasher, new_hasher, restore_hasher
from .errors import (
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    RangeInvalid,
    SizeInvalid,
)
from .notify import Notifier

# Bytes gathered before one write+hash step: large enough to amortise the thread hop,
# small enough that memory per upload stays bounded.
BUFFER_SIZE = 1024 * 1024
# A blob whose declared length fits in one buffer is verified in memory and stored with one
# atomic put: most layers of real images and every config are this small.
SMALL_BLOB = BUFFER_SIZE
DEFAULT_ALGORITHM = "sha256"
_UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True, slots=True)
class UploadStatus:
    upload_id: str
    offset: int


def validate_upload_id(upload_id: str) -> str:
    if not _UPLOAD_ID_RE.fullmatch(upload_id):
        raise BlobUploadUnknown(f"upload unknown: {upload_id[:100]!r}")
    return upload_id


class Uploads:
    def __init__(
        self, driver: StorageDriver, blobs: BlobStore, events: Notifier | None = None
    ) -> None:
        self.driver = driver
        self.blobs = blobs
        self.events = events

    async def _pushed(self, name: str, digest: Digest, size: int, origin: Origin | None) -> int:
        if self.events is not None:
            await self.events.blob("push", name, digest, size, origin)
        return size

    async def start(self, name: str) -> UploadStatus:
        upload_id = str(uuid.uuid4())
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        await self.driver.put(paths.upload_started_at(name, upload_id), now.encode())
        return UploadStatus(upload_id, 0)

    async def _require(self, name: str, upload_id: str) -> None:
        validate_upload_id(upload_id)
        try:
            await self.driver.stat(paths.upload_started_at(name, upload_id))
        except PathNotFound:
            raise BlobUploadUnknown(f"upload unknown: {upload_id}") from None

    async def status(self, name: str, upload_id: str) -> UploadStatus:
        await self._require(name, upload_id)
        return UploadStatus(upload_id, await self._stored_size(name, upload_id))

    async def _stored_size(self, name: str, upload_id: str) -> int:
        """What has reached storage (opening a writer reads it without writing anything)."""
        writer = await self.open_data(name, upload_id)
        await writer.close()
        return writer.size

    async def _open_session(self, name: str, upload_id: str) -> FileWriter:
        """``_require`` and ``_open`` at once: independent reads (of a validated id)."""
        validate_upload_id(upload_id)
        _, writer = await asyncio.gather(
            self._require(name, upload_id), self.open_data(name, upload_id)
        )
        return writer

    async def open_data(self, name: str, upload_id: str) -> FileWriter:
        """The session's data. Exclusive once written to: a concurrent chunk for the same
        session gets WriterBusy from ``write`` or ``close``, never interleaved bytes."""
        return await self.driver.writer(paths.upload_data(name, upload_id), append=True)

    async def _busy(self, name: str, upload_id: str) -> RangeInvalid:
        offset = await self._stored_size(name, upload_id)
        return RangeInvalid(
            "another chunk of this upload is being written; ask for the upload's status "
            "and resume from its Range",
            headers=_range_headers(offset),
        )

    async def append(
        self,
        name: str,
        upload_id: str,
        body: AsyncIterable[bytes],
        content_range: tuple[int, int] | None = None,
        content_length: int | None = None,
    ) -> UploadStatus:
        """Append a chunk. With ``content_range`` its start must be the current offset."""
        if (
            content_range is not None
            and content_length is not None
            and content_range[1] - content_range[0] + 1 != content_length
        ):
            validate_upload_id(upload_id)
            await self._require(name, upload_id)  # an unknown session is the answer first
            raise SizeInvalid("Content-Length does not match Content-Range")
        writer = await self._open_session(name, upload_id)
        try:
            start = writer.size
            if content_range is not None and content_range[0] != start:
                raise RangeInvalid(
                    f"chunk starts at {content_range[0]}, upload is at {start}",
                    headers=_range_headers(start),
                )
            # A small session the writer holds whole is hashed from those bytes (no state is
            # saved for it). Else only a state saved at exactly this offset: the bytes of an
            # unfinished upload are not readable on every store (S3 shows them only once
            # committed). Without one (a failed chunk, no OpenSSL state API) hashing waits for
            # ``complete``.
            hasher = _held_hasher(writer, start)
            if hasher is None:
                hasher = await self._saved_hasher(name, upload_id, DEFAULT_ALGORITHM, start)
            expected = content_length
            if content_range is not None:
                expected = content_range[1] - content_range[0] + 1
                body = _exactly(body, expected)
            if expected is not None:
                writer.expect(expected)  # S3 streams the parts this chunk fills
            await _copy(body, writer, hasher)
        except BaseException as exc:
            # Keep what reached storage (the client can ask where to resume); drop the buffer.
            with contextlib.suppress(Exception):
                await writer.close()
            if isinstance(exc, WriterBusy):  # a store that detects the conflict mid-write
                raise await self._busy(name, upload_id) from None
            raise
        try:
            await writer.close()
        except WriterBusy:
            raise await self._busy(name, upload_id) from None
        # Nothing appended: the state at ``start`` is saved already (or needs none).
        if hasher is not None and writer.size != start and _held(writer, writer.size) is None:
            await self._save_state(name, upload_id, hasher, writer.size)
        return UploadStatus(upload_id, writer.size)

    async def complete(
        self,
        name: str,
        upload_id: str,
        digest: Digest,
        body: AsyncIterable[bytes] | None = None,
        content_range: tuple[int, int] | None = None,
        content_length: int | None = None,
        origin: Origin | None = None,
    ) -> int:
        """Finish an upload: verify the digest, commit the blob, link it. Returns its size."""
        if body is not None and content_range is None and _small(content_length):
            data = await _read_exactly(body, content_length or 0)
            size = await self._complete_small(name, upload_id, digest, data)
            if size is not None:
                return await self._pushed(name, digest, size, origin)
            body = _once(data)
        elif body is not None and _whole(content_range, content_length):
            if content_range is not None:  # held to it, as ``append`` does
                body = _exactly(body, content_range[1] + 1)
                content_length = content_range[1] + 1
            size = await self._complete_whole(name, upload_id, digest, body, content_length)
            if size is not None:
                return await self._pushed(name, digest, size, origin)
        if body is not None:
            await self.append(name, upload_id, body, content_range, content_length)
            writer = await self.open_data(name, upload_id)
        else:
            writer = await self._open_session(name, upload_id)
        held = _held(writer, writer.size)
        if held is not None:
            # A small session whose bytes the writer holds (S3: in its state object): stored
            # like a monolithic small blob, without the commit, hash state and move.
            await writer.close()
            size = await self._finish_small(name, upload_id, digest, held)
            return await self._pushed(name, digest, size, origin)
        size = writer.size
        saved = await self._saved_hasher(name, upload_id, digest.algorithm, size)
        try:
            await writer.commit()
        except WriterBusy:  # another chunk is being written: that writer keeps the session
            raise await self._busy(name, upload_id) from None
        try:
            # No state saved at this offset (sha512, a failed chunk, no OpenSSL state API):
            # hash the committed bytes, which every store can read back now.
            hasher = saved or await self._resume_hasher(name, upload_id, digest.algorithm, size)
            if hasher.hexdigest() != digest.hex:
                raise DigestInvalid(f"content does not match digest {digest}")
        except BaseException:
            with contextlib.suppress(Exception):
                await writer.cancel()
            await self.cancel(name, upload_id)
            raise
        return await self._pushed(
            name, digest, await self.adopt(name, upload_id, digest, size), origin
        )

    async def adopt(self, name: str, upload_id: str, digest: Digest, size: int) -> int:
        """Make the session's committed, verified ``data`` the blob ``digest`` and link it into
        ``name``; the session is gone afterwards. Returns the size."""
        data_key = paths.upload_data(name, upload_id)
        try:
            installed, moved = await self._install(
                digest,
                lambda: self.driver.move(data_key, paths.blob_data(digest)),
                lambda: self.driver.delete(data_key),
            )
        except WriterBusy:
            await self.driver.delete_tree(paths.upload_dir(name, upload_id))
            raise BlobUploadInvalid(
                "a chunk for this upload arrived while it was being completed"
            ) from None
        if installed:
            if moved is None:  # a GC removed it right after the move
                await self.driver.delete_tree(paths.upload_dir(name, upload_id))
                raise BlobUploadInvalid("the blob was garbage-collected during the upload; retry")
            if moved != size:
                # A concurrent chunk slipped in between the commit and the move: the content
                # no longer matches the verified digest, so it must not stay under it.
                await self.driver.delete_tree(paths.blob_dir(digest))
                self.blobs.forget(digest)
                await self.driver.delete_tree(paths.upload_dir(name, upload_id))
                raise BlobUploadInvalid("a chunk for this upload arrived while it was completing")
        await self.blobs.link(name, digest)
        await self.driver.delete_tree(paths.upload_dir(name, upload_id))
        return size

    async def _install(
        self,
        digest: Digest,
        install: Callable[[], Awaitable[None]],
        drop: Callable[[], Awaitable[None]],
    ) -> tuple[bool, int | None]:
        """Make verified content the blob ``digest`` inside the GC handshake (docs/gc.md): the
        digest is reserved first (``reserve``, not the cached ``exists``: the blob may have just
        been collected, and a GC removing it is waited for). A blob stored meanwhile is kept
        and ours dropped; else ``install`` puts ours in place and it is reserved again, read
        fresh. Returns whether ours was installed, and the stored size (None: a GC removed it
        right after)."""
        if await self.blobs.reserve(digest, touch_absent=True) is not None:
            await drop()
            return False, None
        await install()
        self.blobs.forget(digest)
        return True, await self.blobs.reserve(digest)

    async def _complete_whole(
        self,
        name: str,
        upload_id: str,
        digest: Digest,
        body: AsyncIterable[bytes],
        content_length: int | None,
    ) -> int | None:
        """The whole blob arrives with the final PUT (or a POST ``?digest=``) into an empty
        session: written straight to its place (invisible until committed) while hashed, and
        committed only once verified. No session data, writer state, hash state or move (on
        S3 a server-side copy of the whole blob). None when the session already holds chunks
        (the caller appends to it)."""
        opened = await asyncio.gather(
            self._open_session(name, upload_id),
            self.driver.writer(paths.blob_data(digest)),
            return_exceptions=True,
        )
        session, writer = opened
        if isinstance(writer, BaseException):
            raise writer
        if isinstance(session, BaseException):
            await writer.cancel()  # an unknown session leaves nothing under the digest
            raise session
        await session.close()
        if session.size:
            await writer.cancel()
            return None
        try:
            if content_length is not None:
                writer.expect(content_length)
            hasher = new_hasher(digest.algorithm)
            await _copy(body, writer, hasher)
            if hasher.hexdigest() != digest.hex:
                raise DigestInvalid(f"content does not match digest {digest}")
            size = writer.size
            installed, stored = await self._install(digest, writer.commit, writer.cancel)
            if installed and stored is None:  # a GC removed it at once
                raise BlobUploadInvalid("the blob was garbage-collected during the upload; retry")
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await writer.cancel()
            if isinstance(exc, DigestInvalid | BlobUploadInvalid):
                await self.driver.delete_tree(paths.upload_dir(name, upload_id))
            raise
        await asyncio.gather(
            self.blobs.link(name, digest),
            self.driver.delete_tree(paths.upload_dir(name, upload_id)),
        )
        return size

    async def cancel(self, name: str, upload_id: str) -> None:
        await self._require(name, upload_id)
        # The tree's delete also ends a writer's store-side state (S3: aborts its multipart
        # upload); a chunk in flight loses its session.
        await self.driver.delete_tree(paths.upload_dir(name, upload_id))

    async def _complete_small(
        self, name: str, upload_id: str, digest: Digest, data: bytes
    ) -> int | None:
        """The whole blob arrived with the final PUT and fits in one buffer: verify it in memory
        and store it with one atomic put, skipping the session's data, hash state and the move.
        None when the session already holds chunks (the caller takes the streaming path)."""
        writer = await self._open_session(name, upload_id)
        if writer.size:
            await writer.close()
            return None
        await writer.cancel()
        return await self._finish_small(name, upload_id, digest, data)

    async def _finish_small(self, name: str, upload_id: str, digest: Digest, data: bytes) -> int:
        """Verify and store a whole small blob, link it and end its session."""
        session = paths.upload_dir(name, upload_id)
        try:
            size = await self._verify_small(digest, data)
            await self.blobs.put_content(digest, data)
        except BaseException:
            await self.driver.delete_tree(session)
            raise
        # The link (after the reservation in put_content) and the session's removal are
        # independent: one round trip for both.
        await asyncio.gather(self.blobs.link(name, digest), self.driver.delete_tree(session))
        return size

    @staticmethod
    async def _verify_small(digest: Digest, data: bytes) -> int:
        actual = await asyncio.to_thread(lambda: hashlib.new(digest.algorithm, data).hexdigest())
        if actual != digest.hex:
            raise DigestInvalid(f"content does not match digest {digest}")
        return len(data)

    async def _put_small(self, name: str, digest: Digest, data: bytes) -> int:
        size = await self._verify_small(digest, data)
        # put_content reserves the digest (the GC handshake) before writing, like a manifest.
        await self.blobs.put_content(digest, data)
        await self.blobs.link(name, digest)
        return size

    async def monolithic(
        self,
        name: str,
        digest: Digest,
        body: AsyncIterable[bytes],
        content_length: int | None = None,
        origin: Origin | None = None,
    ) -> int:
        """POST ?digest=: the whole blob in one request (a small one needs no session at all)."""
        if _small(content_length):
            data = await _read_exactly(body, content_length or 0)
            return await self._pushed(
                name, digest, await self._put_small(name, digest, data), origin
            )
        status = await self.start(name)
        try:
            return await self.complete(name, status.upload_id, digest, body, origin=origin)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.cancel(name, status.upload_id)
            raise

    async def _saved_hasher(
        self, name: str, upload_id: str, algorithm: str, offset: int
    ) -> Hasher | None:
        """The hasher saved at exactly ``offset``, without reading any data; else None."""
        if offset == 0:
            return new_hasher(algorithm)  # nothing hashed yet: no state to read
        key = paths.upload_hashstate(name, upload_id, algorithm, offset)
        try:
            return restore_hasher(algorithm, await self.driver.get(key))
        except PathNotFound:
            return None

    async def _resume_hasher(
        self, name: str, upload_id: str, algorithm: str, offset: int
    ) -> Hasher:
        """A hasher positioned at ``offset``: from a saved state, topped up from the data."""
        base, hasher = 0, None
        try:
            saved = await self.driver.list(paths.upload_hashstates(name, upload_id, algorithm))
        except PathNotFound:
            saved = []
        for candidate in sorted((int(s) for s in saved if s.isdigit()), reverse=True):
            if candidate > offset:
                continue
            key = paths.upload_hashstate(name, upload_id, algorithm, candidate)
            with contextlib.suppress(PathNotFound):
                hasher = restore_hasher(algorithm, await self.driver.get(key))
            if hasher is not None:
                base = candidate
                break
        if hasher is None:
            hasher = new_hasher(algorithm)
        if base < offset:
            # Bytes written without a saved state (another algorithm, or a crash mid-chunk).
            async for chunk in self.driver.read(
                paths.upload_data(name, upload_id), base, offset - base
            ):
                await asyncio.to_thread(hasher.update, chunk)
        return hasher

    async def _save_state(self, name: str, upload_id: str, hasher: Hasher, offset: int) -> None:
        """Save the hash state at ``offset``. Earlier offsets' states stay (as Distribution's
        do) until the session's directory is removed at completion, cancel or purge: deleting
        each chunk's predecessor cost a request per chunk, and an offset's state never changes
        (the bytes before a saved offset are never rewritten)."""
        state = hasher.state()
        if state is None:
            return
        await self.driver.put(
            paths.upload_hashstate(name, upload_id, hasher.algorithm, offset), state
        )


async def _exactly(body: AsyncIterable[bytes], length: int) -> AsyncIterator[bytes]:
    """``body``, failing with SIZE_INVALID as soon as it proves longer or shorter than ``length``.

    It fails before ``_copy`` writes its last buffer, so a chunk that disagrees with its
    Content-Range is not appended (beyond whole buffers already written, for huge chunks).
    """
    seen = 0
    async for chunk in body:
        seen += len(chunk)
        if seen > length:
            raise SizeInvalid(f"chunk is longer than its Content-Range ({length} bytes)")
        yield chunk
    if seen != length:
        raise SizeInvalid(f"chunk is {seen} bytes, its Content-Range says {length}")


async def _copy(body: AsyncIterable[bytes], writer: FileWriter, hasher: Hasher | None) -> None:
    """Stream ``body`` into ``writer`` (and ``hasher``) in bounded steps, hashing while writing."""
    buffer = bytearray()
    async for chunk in body:
        buffer += chunk
        if len(buffer) >= BUFFER_SIZE:
            # Handed over, not copied: a new buffer takes the next bytes.
            data, buffer = buffer, bytearray()
            await _write(writer, hasher, data)
    if buffer:
        await _write(writer, hasher, buffer)


async def _write(writer: FileWriter, hasher: Hasher | None, data: bytearray) -> None:
    if hasher is None:
        await writer.write(data)
    else:
        await asyncio.gather(asyncio.to_thread(hasher.update, data), writer.write(data))


def _held(writer: FileWriter, size: int) -> bytes | None:
    """A small session's ``size`` bytes when the writer holds them all (S3: they travel in its
    state object). Such a session needs no saved hash state: the next chunk and the completion
    read these bytes anyway."""
    if size > SMALL_BLOB:
        return None
    held = writer.held()
    return held if held is not None and len(held) == size else None


def _held_hasher(writer: FileWriter, offset: int) -> Hasher | None:
    """A hasher over the bytes ``_held`` gives, without a request; else None."""
    held = _held(writer, offset)
    if held is None:
        return None
    hasher = new_hasher(DEFAULT_ALGORITHM)
    hasher.update(held)
    return hasher


def _whole(content_range: tuple[int, int] | None, content_length: int | None) -> bool:
    """Whether a final PUT's body may be the whole blob: no Content-Range, or one from 0 that
    agrees with Content-Length (a chunk elsewhere, or a disagreement, goes through ``append``,
    which answers it)."""
    if content_range is None:
        return True
    return content_range[0] == 0 and content_length in (None, content_range[1] + 1)


def _small(content_length: int | None) -> bool:
    return content_length is not None and content_length <= SMALL_BLOB


async def _read_exactly(body: AsyncIterable[bytes], length: int) -> bytes:
    """The whole body, which must be exactly ``length`` bytes (bounded: at most one buffer)."""
    data = bytearray()
    async for chunk in body:
        data += chunk
        if len(data) > length:
            raise SizeInvalid("body is longer than Content-Length")
    if len(data) != length:
        raise SizeInvalid("body is shorter than Content-Length")
    return bytes(data)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _range_headers(offset: int) -> dict[str, str]:
    return {"Range": f"0-{max(offset - 1, 0)}"}


def parse_content_range(value: str) -> tuple[int, int]:
    """``<start>-<end>`` (inclusive), as the distribution spec sends it; ``bytes `` tolerated."""
    text = value.strip()
    if text.startswith("bytes "):
        text = text[6:].split("/", 1)[0]
    start_s, sep, end_s = text.partition("-")
    digits = start_s.isascii() and end_s.isascii() and start_s.isdigit() and end_s.isdigit()
    if not sep or not digits or len(text) > 40:
        raise RangeInvalid(f"invalid Content-Range: {value[:100]!r}")
    start, end = int(start_s), int(end_s)
    if end < start:
        raise RangeInvalid(f"invalid Content-Range: {value[:100]!r}")
    return start, end
