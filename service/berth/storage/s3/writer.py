"""An appendable object on S3, built as a multipart upload whose progress lives in the bucket.

For a writer on key ``K``:

* ``K`` itself does not exist until ``commit`` (CompleteMultipartUpload, or one PutObject for a
  small object), which is atomic: readers see nothing or the whole object.
* ``K.berth-mpu`` (state, JSON) names the multipart upload, its fixed part size and the ETags of
  the parts uploaded so far, and the key and size of the *tail*.
* ``K.berth-tail-<random>`` holds the bytes after the last whole part (fewer than one part).
  S3 parts must be at least 5 MiB and, for R2, all of one size except the last; a chunk that
  leaves a remainder is staged there, in storage, so any replica can continue the upload.

Two writers on one session (two replicas given the same upload at once) must not both upload
part ``n+1`` of one multipart upload: the later part would silently replace the earlier.
State writes are conditional (``If-Match`` the ETag read), and before a writer adds a part to a
multipart upload it did not start, it *claims* the state: a conditional write recording its
token, the time and how long the claim lasts (``upload_claim_seconds``). Another writer that
finds a live claim raises WriterBusy instead of uploading; a claim left by a crashed process
expires. While any of its parts uploads (a streamed part: for as long as the client sends), the
writer renews its claim every sixth of its lifetime in the background, so a slow client keeps
the session and a killed replica leaves it busy for one lifetime at most. If a renewal is
refused (another writer took over: this process stalled past the claim's lifetime) or the last
renewal is older than half the lifetime, the writer stops its parts before they finish (a
streamed part's body refuses its next piece) and fails the write; ``close`` releases the claim.
A writer that starts its own multipart upload needs no claim: its parts cannot collide, and the
loser of the conditional state write aborts its upload.

Parts are pipelined: once a part is full, ``write`` starts its upload in a task and returns,
so the next part is received while the previous ones upload. A writer has at most
``parts_in_flight`` parts uploading, and a part only uploads in the background if the process's
``PartBudget`` (bytes of part buffers held for background uploads, one per driver) has room for
it; otherwise ``write`` waits for it as without pipelining. Part numbers are given by position
when a part starts (the number of recorded ETags plus the parts in flight, plus one), and ETags
are recorded strictly in order as the oldest part finishes. The writer's content is always
``etags`` + the parts in flight (oldest first) + ``_buffer``: when a part fails, the writer
waits for the later ones, and puts all of them back at the front of the buffer (the parts after
it are uploaded again later, under the same numbers, with the same bytes), so what ``close``
persists stays contiguous. ``close``, ``commit`` and ``cancel`` wait for every part in flight;
``close`` persists, then raises a part failure that ``write`` had not raised yet.

Memory per open writer is bounded by ``parts_in_flight`` + 1 parts plus one incoming write
(one part when the budget is spent).

Streamed parts: after ``expect(n)`` (a request's Content-Length), a writer does not gather a
part that the coming bytes will fill: its UploadPart starts at once with the buffered bytes as
its start and takes each write's bytes as they arrive (``_Feed``: one piece at a time, so a
writer holds about one piece instead of one part). In a multipart upload another writer
started, the claim is taken before the part starts and renewed while it streams. Its bytes
are not kept, so it cannot be sent again: when a streamed part fails, or the writer closes
before feeding all of it (the client went away), the content is cut back to the start of that
part (its first bytes, the old buffer, are kept) and everything after it is dropped; ``size``
says where to resume. ``close`` writes the new tail object first, then the state that names it,
then deletes the old tail: a crash at any point leaves a consistent state (at worst an orphaned
tail or part that the next writer overwrites and purging removes). An abandoned upload leaves
the state, the tail and an in-progress multipart upload; deleting the upload directory aborts
it (see ``S3Driver.delete``), and a bucket lifecycle rule ``AbortIncompleteMultipartUpload``
catches the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..driver import FileWriter, PathNotFound, StorageError, StorageUnavailable, WriterBusy

if TYPE_CHECKING:
    from .driver import S3Driver

STATE_SUFFIX = ".berth-mpu"
TAIL_INFIX = ".berth-tail-"
# A tail up to this size travels inside the state object: a small upload then costs one PUT
# per PATCH and one GET to resume, and its commit is a PutObject from memory.
INLINE_TAIL_MAX = 1024 * 1024
# A claim recorded without its lifetime (by an earlier version, which did not renew it in the
# background) keeps others out this long.
LEGACY_CLAIM_SECONDS = 120.0
# A streamed part takes a write's bytes in pieces of at most this size, one waiting at a time.
FEED_PIECE = 256 * 1024


def is_internal(name: str) -> bool:
    """Objects of writers in progress, hidden from ``list``."""
    return name.endswith(STATE_SUFFIX) or TAIL_INFIX in name


@dataclass
class WriterState:
    part_size: int
    upload_id: str | None = None
    etags: list[str] = field(default_factory=list)
    tail_key: str | None = None  # full bucket key; None with a tail: inline in the state
    tail_size: int = 0
    claim: str | None = None  # token of the writer adding parts right now
    claimed_at: float = 0.0  # epoch seconds
    claim_seconds: float = LEGACY_CLAIM_SECONDS  # how long the claim lasts unless renewed

    def claimed_by_other(self, token: str, now: float) -> bool:
        return (
            bool(self.claim) and self.claim != token and now - self.claimed_at < self.claim_seconds
        )

    @property
    def size(self) -> int:
        return len(self.etags) * self.part_size + self.tail_size

    def to_bytes(self, inline_tail: bytes = b"") -> bytes:
        """One JSON line, then the inline tail (if any) as raw bytes."""
        return self.to_json() + b"\n" + inline_tail

    @classmethod
    def from_bytes(cls, data: bytes) -> tuple[WriterState, bytes | None]:
        head, _, rest = data.partition(b"\n")
        state = cls.from_json(head)
        inline = rest if state.tail_size and state.tail_key is None else None
        if inline is not None and len(inline) != state.tail_size:
            raise ValueError("truncated writer state")
        return state, inline

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "v": 1,
                "part_size": self.part_size,
                "upload_id": self.upload_id,
                "etags": self.etags,
                "tail_key": self.tail_key,
                "tail_size": self.tail_size,
                "claim": self.claim,
                "claimed_at": self.claimed_at,
                "claim_seconds": self.claim_seconds,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> WriterState:
        obj = json.loads(data)
        return cls(
            part_size=int(obj["part_size"]),
            upload_id=obj.get("upload_id"),
            etags=[str(e) for e in obj.get("etags", [])],
            tail_key=obj.get("tail_key"),
            tail_size=int(obj.get("tail_size", 0)),
            claim=obj.get("claim"),
            claimed_at=float(obj.get("claimed_at", 0.0)),
            claim_seconds=float(obj.get("claim_seconds", LEGACY_CLAIM_SECONDS)),
        )


class PartBudget:
    """Bytes of part buffers a process may hold for uploads in the background.

    A writer takes a part's size before it lets the part upload while it receives the next one,
    and gives it back once the part is recorded (or put back into the writer's buffer). No
    room: the writer waits for that part, as without pipelining, so the budget never blocks an
    upload; it bounds the memory pipelining adds. Single-threaded (one event loop per driver).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0

    def take(self, n: int) -> bool:
        if self.held + n > self.limit:
            return False
        self.held += n
        self.peak = max(self.peak, self.held)
        return True

    def give(self, n: int) -> None:
        self.held -= n


@dataclass(eq=False)
class _Part:
    number: int
    body: bytearray | bytes  # streamed: only the bytes it started with (the old buffer)
    task: asyncio.Task[str]
    budgeted: int  # bytes taken from the budget (0: the writer waits for this part)
    streamed: bool = False


class _Feed:
    """The streamed part being filled: pieces go from ``write`` to its UploadPart's body."""

    def __init__(
        self, start: bytearray, length: int, check: Callable[[], None] | None = None
    ) -> None:
        self.start = start  # the writer's old buffer: never changed, kept to cut back to
        self.remaining = length - len(start)  # still to be put
        self._needed = self.remaining
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1)
        self._check = check  # raises when the part must not go on (its claim is stale)
        self.task: asyncio.Task[str] | None = None

    async def chunks(self) -> AsyncIterator[bytes | memoryview]:
        if self.start:
            yield memoryview(self.start)
        left = self._needed
        while left > 0:
            piece = await self._queue.get()
            left -= len(piece)
            if self._check is not None:
                self._check()  # before the piece: the last one completes the part
            yield piece

    async def put(self, piece: memoryview) -> bool:
        """Hand a piece to the upload (waiting while one is unsent); False if it has ended.
        Copied: the caller may reuse its buffer once ``write`` returns."""
        task = self.task
        assert task is not None
        if task.done():
            return False
        data = bytes(piece)
        if self._queue.full():
            putter = asyncio.ensure_future(self._queue.put(data))
            try:
                await asyncio.wait({putter, task}, return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                putter.cancel()
                raise
            if not putter.done():  # the upload ended first
                putter.cancel()
                return False
        else:
            self._queue.put_nowait(data)
        self.remaining -= len(piece)
        return True


class S3Writer(FileWriter):
    def __init__(
        self,
        driver: S3Driver,
        key: str,
        state: WriterState,
        persisted: bool,
        inline_tail: bytes | None = None,
        etag: str = "",
    ) -> None:
        self._driver = driver
        self._key = key  # driver-relative
        self._bucket_key = driver.full_key(key)
        self._state = state
        self._persisted = persisted  # a state object exists in the bucket
        self._etag = etag  # of that state object: the next close must replace exactly it
        self._old_tail: str | None = state.tail_key  # the tail object the stored state names
        self._buffer = bytearray(inline_tail or b"")
        self._tail_loaded = state.tail_size == 0 or inline_tail is not None
        self._dirty = False
        self.size = state.size
        self._token = uuid.uuid4().hex
        # The multipart upload was started by an earlier writer: adding parts needs a claim.
        self._shared_upload = state.upload_id is not None
        self._claim_seconds = driver.claim_seconds
        self._claim_lock = asyncio.Lock()  # one claim write at a time (renewals, the writer)
        self._renewer: asyncio.Task[None] | None = None  # renews the claim while parts upload
        self._renewing = False  # cleared to stop the renewer
        self._claim_error: StorageError | None = None  # the claim was lost or went stale
        self._stored = (state.to_json(), inline_tail or b"")  # what the state object holds
        self._lost = False  # another writer owns the session: persist nothing more
        self._inflight: deque[_Part] = deque()  # parts uploading, oldest first
        self._expected = 0  # bytes the caller said are coming (``expect``)
        self._feed: _Feed | None = None  # the streamed part being filled

    @property
    def _state_key(self) -> str:
        return self._bucket_key + STATE_SUFFIX

    async def _load_tail(self) -> None:
        """Bring the staged tail (less than one part) into the buffer before appending to it."""
        if self._tail_loaded:
            return
        assert self._state.tail_key is not None
        data = await self._driver.get_full(self._state.tail_key)
        if len(data) != self._state.tail_size:
            raise PathNotFound(self._key)
        self._buffer = bytearray(data)
        self._tail_loaded = True

    def expect(self, length: int) -> None:
        self._expected = length

    async def write(self, data: bytes | bytearray) -> None:
        if not data:
            return
        if self._claim_error is not None:  # its parts were stopped: cut back, then fail
            self._cut_feed()
            await self._settle(0)
            raise self._claim_error
        await self._load_tail()
        self._dirty = True
        await self._settle(len(self._inflight))  # record the parts that have finished
        part_size = self._state.part_size
        view = memoryview(data)
        while view:
            if len(self._buffer) >= part_size:  # a tail restored after a failure
                await self._send_whole_parts()
            streamable = self._expected and len(self._buffer) + self._expected >= part_size
            if self._feed is None and streamable:
                await self._start_part(part_size, stream=True)
            if self._feed is not None:
                take = min(self._feed.remaining, len(view))
                await self._feed_part(view[:take])
                view = view[take:]
            elif len(self._buffer) + len(view) >= part_size:
                # Fill the buffer to exactly one part and hand it over whole (no part-sized
                # copy). ``size`` counts what is in the writer: a part failure or a
                # cancellation while a part starts leaves the rest of ``data`` out, and the
                # caller sees the real size.
                take = part_size - len(self._buffer)
                self._took(take)
                self._buffer += view[:take]
                view = view[take:]
                await self._send_whole_parts()
            else:
                self._took(len(view))
                self._buffer += view
                break

    def _took(self, n: int) -> None:
        self.size += n
        self._expected = max(0, self._expected - n)

    async def _feed_part(self, view: memoryview) -> None:
        """Give ``view`` (no more than the streamed part still needs) to the streamed part."""
        feed = self._feed
        assert feed is not None
        for offset in range(0, len(view), FEED_PIECE):
            piece = view[offset : offset + FEED_PIECE]
            if not await feed.put(piece):
                self._feed = None
                await self._settle(0)  # raises the part's failure, content cut back
                raise StorageUnavailable(f"object store: part upload of {self._key} ended early")
            self._took(len(piece))
        if not feed.remaining:
            self._feed = None  # whole: it finishes uploading in flight

    def _cut_feed(self) -> bool:
        """Stop a streamed part that will not get all its bytes (``_settle`` then cuts the
        content back to its start). Whether there was one."""
        feed, self._feed = self._feed, None
        if feed is None:
            return False
        assert feed.task is not None
        feed.task.cancel()
        return True

    async def _send_whole_parts(self) -> None:
        """Start uploading every whole part in the buffer, waiting as the bounds require.

        Between awaits the content is always ``etags`` + in flight + ``_buffer``: a part leaves
        the buffer only when it joins ``_inflight``, with no await between, and a failure puts
        the parts in flight back at the front of the buffer (``_settle``).
        """
        part_size = self._state.part_size
        while len(self._buffer) >= part_size:
            await self._start_part(part_size)

    async def _start_part(self, length: int, *, stream: bool = False) -> None:
        """Move the first ``length`` bytes of the buffer into a part upload started now; with
        ``stream``, the whole buffer starts a part of ``length`` bytes that ``write`` fills."""
        limit = self._driver.parts_in_flight
        await self._settle(limit - 1)  # room for one more part
        await self._claim()
        if self._state.upload_id is None:
            upload_id = await self._driver.transport.create_upload(self._bucket_key, self._key)
            self._state.upload_id = upload_id
        # No await from here until the part is in ``_inflight``.
        number = len(self._state.etags) + len(self._inflight) + 1
        if stream:
            start, self._buffer = self._buffer, bytearray()
            feed = _Feed(start, length, self._check_claim if self._shared_upload else None)
            feed.task = asyncio.create_task(
                self._driver.transport.upload_part(
                    self._bucket_key,
                    self._key,
                    self._state.upload_id,
                    number,
                    length,
                    feed.chunks(),
                )
            )
            self._feed = feed
            self._inflight.append(_Part(number, start, feed.task, 0, streamed=True))
            return
        if len(self._buffer) == length:
            part, self._buffer = self._buffer, bytearray()
        else:
            part = self._buffer[:length]
            del self._buffer[:length]
        budget = self._driver.part_budget
        budgeted = len(part) if budget.take(len(part)) else 0
        task = asyncio.create_task(self._upload_part(number, part))
        self._inflight.append(_Part(number, part, task, budgeted))
        del part
        if not budgeted:
            await self._settle(0)  # no room: wait for it, as unpipelined

    async def _settle(self, keep: int, raise_failure: bool = True) -> BaseException | None:
        """Record finished parts, oldest first, until at most ``keep`` are in flight.

        A failed part: wait for every later part, put them all back at the front of the buffer
        (in order, so the content stays contiguous), then raise its error (or return it, with
        ``raise_failure`` false). Cancelling the caller leaves every part in flight and the
        content as it was (``asyncio.wait`` never cancels what it waits for).
        """
        budget = self._driver.part_budget
        while self._inflight and (len(self._inflight) > keep or self._inflight[0].task.done()):
            oldest = self._inflight[0]
            if not oldest.task.done():
                await asyncio.wait([oldest.task])
            error = oldest.task.exception() if not oldest.task.cancelled() else None
            if not oldest.task.cancelled() and error is None:
                self._state.etags.append(oldest.task.result())
                self._inflight.popleft()
                budget.give(oldest.budgeted)
                continue
            self._cut_feed()  # it would wait for bytes that will not come
            pending = [p.task for p in self._inflight if not p.task.done()]
            if pending:
                await asyncio.wait(pending)
            restored = list(self._inflight)
            self._inflight.clear()
            self._restore(restored)
            for p in restored:
                budget.give(p.budgeted)
                if not p.task.cancelled():
                    p.task.exception()  # retrieved: no "never retrieved" warning
            # Parts cancelled because the claim was lost fail with that, not as cancelled.
            failure = error or self._claim_error or asyncio.CancelledError()
            if raise_failure:
                raise failure
            return failure
        return None

    def _restore(self, parts: list[_Part]) -> None:
        """Put the bytes of failed parts (oldest first) back in front of the buffer. A streamed
        part's bytes are gone: the content ends with the bytes it started with."""
        kept = bytearray()
        for p in parts:
            kept += p.body
            if p.streamed:
                self._buffer = kept
                self.size = len(self._state.etags) * self._state.part_size + len(kept)
                return
        self._buffer[:0] = kept

    async def _abandon(self) -> None:
        """Stop every part in flight and forget it (the writer's content is being thrown away,
        or it cannot be persisted)."""
        self._feed = None
        parts = list(self._inflight)
        self._inflight.clear()
        for p in parts:
            p.task.cancel()
        await self._stop_renewing()
        if parts:
            await asyncio.wait([p.task for p in parts])
        for p in parts:
            self._driver.part_budget.give(p.budgeted)
            if not p.task.cancelled():
                p.task.exception()

    async def _claim(self) -> None:
        """Make sure no other writer adds parts to a shared multipart upload while we do."""
        if not self._shared_upload:
            return
        if self._claim_error is not None:
            raise self._claim_error
        async with self._claim_lock:
            state, now = self._state, time.time()
            # Fresh enough that renewals keep it well within half its lifetime (see _check_claim).
            fresh = now - state.claimed_at < self._claim_seconds / 6
            if not (state.claim == self._token and fresh):
                if state.claimed_by_other(self._token, now):
                    self._lost = True  # close must not overwrite the other writer's state
                    raise WriterBusy(self._key)
                await self._write_claim(now)
        if self._renewer is None or self._renewer.done():
            self._renewing = True
            self._renewer = asyncio.create_task(self._renew())

    async def _write_claim(self, now: float) -> None:
        """Record our claim (taken or renewed) in the stored state; the caller holds the lock."""
        stored = WriterState.from_json(self._stored[0])
        stored.claim, stored.claimed_at = self._token, now
        stored.claim_seconds = self._claim_seconds
        # If-Match: a writer that claimed or closed since we read the state wins, we refuse.
        try:
            self._etag = await self._driver.put_full(
                self._state_key, stored.to_bytes(self._stored[1]), self._key, if_match=self._etag
            )
        except WriterBusy:
            self._lost = True
            raise
        self._stored = (stored.to_json(), self._stored[1])
        self._state.claim, self._state.claimed_at = self._token, now
        self._state.claim_seconds = self._claim_seconds

    async def _renew(self) -> None:
        """Renew the claim every sixth of its lifetime while a part uploads; stop when none
        does (the next part claims again). A refused renewal, or none for half the lifetime,
        stops the parts: another writer may take the session over."""
        while True:
            await asyncio.sleep(self._claim_seconds / 6)
            if not self._renewing or not any(not p.task.done() for p in self._inflight):
                return
            try:
                async with self._claim_lock:
                    if not self._renewing or self._state.claim != self._token or self._lost:
                        return
                    await self._write_claim(time.time())
            except WriterBusy:
                self._lose_claim(WriterBusy(self._key))
                return
            except Exception:  # the store is unreachable: try again at the next beat
                try:
                    self._check_claim()
                except StorageError as stale:
                    self._lose_claim(stale)
                    return

    def _check_claim(self) -> None:
        """Raise unless our claim is live with room to spare (a streamed part asks before each
        piece: a part must not complete once another writer may have taken the session)."""
        if self._claim_error is not None:
            raise self._claim_error
        if time.time() - self._state.claimed_at >= self._claim_seconds / 2:
            self._claim_error = StorageUnavailable(
                f"object store: could not renew the claim on {self._key}"
            )
            raise self._claim_error

    def _lose_claim(self, error: StorageError) -> None:
        """Stop every part in flight before it completes; ``write`` and ``_settle`` raise
        ``error``."""
        self._claim_error = error
        for p in self._inflight:
            p.task.cancel()

    async def _stop_renewing(self) -> None:
        """Stop the renewer; a claim write under way finishes first (cut off, whether it
        landed, and so the state's ETag, would be unknown)."""
        task, self._renewer = self._renewer, None
        self._renewing = False
        if task is None or task.done():
            return
        if not self._claim_lock.locked():
            task.cancel()  # asleep (the writer's own claim writes never overlap this)
        await asyncio.wait([task])  # our own cancellation still propagates

    async def _release(self) -> None:
        """Give up a claim without other changes (a failed or empty write, a failed commit)."""
        if self._state.claim != self._token or self._lost:
            return
        stored = WriterState.from_json(self._stored[0])
        stored.claim, stored.claimed_at = None, 0.0
        with contextlib.suppress(Exception):  # best effort: otherwise it expires
            self._etag = await self._driver.put_full(
                self._state_key, stored.to_bytes(self._stored[1]), self._key, if_match=self._etag
            )
            self._stored = (stored.to_json(), self._stored[1])
            self._state.claim, self._state.claimed_at = None, 0.0

    async def _upload_part(self, number: int, body: bytes | bytearray) -> str:
        """UploadPart (in its own task); returns the ETag."""
        assert self._state.upload_id is not None
        return await self._driver.transport.upload_part(
            self._bucket_key, self._key, self._state.upload_id, number, len(body), body
        )

    async def close(self) -> None:
        """Persist the progress (tail object, then state) so another process can continue.

        Waits for every part in flight first; a part failure ``write`` had not raised yet is
        raised after the state (with that part's bytes back in the tail) is persisted.
        """
        self._expected = 0
        cut = self._cut_feed()
        try:
            failure = await self._settle(0, raise_failure=False)
        except BaseException:
            await self._abandon()  # close itself was cancelled: persist nothing
            raise
        await self._stop_renewing()
        if self._lost:
            return
        if not self._dirty:
            await self._release()
            return
        await self._persist()
        if failure is not None and not (cut and isinstance(failure, asyncio.CancelledError)):
            raise failure

    async def _persist(self) -> None:
        state = self._state
        new_tail: str | None = None
        inline = b""
        if len(self._buffer) > INLINE_TAIL_MAX:
            new_tail = f"{self._bucket_key}{TAIL_INFIX}{uuid.uuid4().hex}"
            await self._driver.put_full(new_tail, bytes(self._buffer))
        elif self._buffer:
            inline = bytes(self._buffer)
        state.tail_key, state.tail_size = new_tail, len(self._buffer)
        state.claim, state.claimed_at = None, 0.0  # released with the progress
        # Conditional: another writer that closed meanwhile (another replica appending to the
        # same session) makes this fail with WriterBusy instead of silently forking the upload.
        try:
            self._etag = await self._driver.put_full(
                self._state_key,
                state.to_bytes(inline),
                self._key,
                if_match=self._etag if self._persisted and self._etag else None,
                if_none_match=not self._persisted,
            )
        except WriterBusy:
            if not self._shared_upload and state.upload_id is not None:
                # The multipart upload this writer started is nobody's: the other one won.
                with contextlib.suppress(Exception):
                    await self._driver.abort_upload(self._bucket_key, state.upload_id)
            if new_tail:
                with contextlib.suppress(Exception):
                    await self._driver.delete_full([new_tail])
            raise
        self._stored = (state.to_json(), inline)
        self._persisted = True
        old, self._old_tail = self._old_tail, new_tail
        if old and old != new_tail:
            await self._driver.delete_full([old])
        self._dirty = False
        self._tail_loaded = True  # the buffer still holds the tail; keep it for a commit

    async def commit(self) -> None:
        """Make ``K`` visible atomically, then drop the state and tail objects."""
        driver, state = self._driver, self._state
        if state.upload_id is None:
            if self._tail_loaded or self._buffer:
                await driver.put_full(self._bucket_key, bytes(self._buffer))
            else:
                assert state.tail_key is not None
                await driver.transport.copy(state.tail_key, self._bucket_key, self._key)
        else:
            try:
                if self._cut_feed():  # a streamed part short of its bytes: cut back
                    await self._settle(0, raise_failure=False)
                    raise StorageUnavailable(f"object store: {self._key} is short of its bytes")
                await self._load_tail()
                await self._send_whole_parts()
                if self._buffer:  # the last part, shorter than the others
                    await self._start_part(len(self._buffer))
                await self._settle(0)
                await self._claim()  # no other writer may be adding a part as we complete
                await driver.transport.complete_upload(
                    self._bucket_key, self._key, state.upload_id, state.etags
                )
                await self._stop_renewing()
            except BaseException:
                await self._abandon()
                await self._release()  # the upload is intact: let the next writer finish it
                raise
        self._buffer = bytearray()
        await self._cleanup(abort=False)

    def held(self) -> bytes | None:
        if self._state.upload_id is not None or self._inflight or not self._tail_loaded:
            return None
        return bytes(self._buffer)

    async def cancel(self) -> None:
        await self._abandon()
        self._buffer = bytearray()
        await self._cleanup(abort=True)

    async def _cleanup(self, abort: bool) -> None:
        state = self._state
        if abort and state.upload_id is not None:
            await self._driver.abort_upload(self._bucket_key, state.upload_id)
        garbage = [k for k in {self._old_tail, state.tail_key} if k]
        if self._persisted:
            garbage.append(self._state_key)
        if garbage:
            await self._driver.delete_full(garbage)
        self._persisted = False
        self._dirty = False


__all__ = ["STATE_SUFFIX", "PartBudget", "S3Writer", "WriterState", "is_internal"]
