"""The storage driver interface: every driver (filesystem, s3) implements exactly this.

Keys are ``/``-separated paths relative to the driver's root, built by the caller (the
registry uses ``paths``). A "directory" is any key prefix that has objects below it. A driver
never interprets a key: whether a call means one object or a tree is said by the operation
(``delete`` or ``delete_tree``), never guessed from the key's shape.

Every failure of the backing store surfaces as a ``StorageError`` subclass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass


class StorageError(Exception):
    """Base of every error a driver raises."""


class PathNotFound(StorageError):
    """The key (or, for ``list``, the prefix) does not exist."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class WriterBusy(StorageError):
    """Another writer (in this process or another replica) holds the object open for append."""


class AlreadyExists(StorageError):
    """``create`` found an object under the key."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class StorageUnavailable(StorageError):
    """The backing store could not be reached, or kept failing (after the driver's retries)."""


class StorageRefused(StorageError):
    """The store refused a request for a reason retrying cannot fix (credentials, a policy)."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    modified: float  # seconds since the epoch


class FileWriter(ABC):
    """An appendable object under construction, invisible to readers until ``commit``.

    ``close`` keeps what was written so another process may reopen the writer with
    ``append=True`` and continue; ``cancel`` throws it away. Bytes written before a failed
    ``write`` are kept or dropped as a whole buffer, never partly (after ``expect``: back to
    the start of the part being streamed): ``size`` after ``close`` is what a later writer
    continues from.
    """

    size: int

    def expect(self, length: int) -> None:
        """Say that ``length`` more bytes are coming (a request's Content-Length): a writer may
        then send them on as they arrive instead of gathering them (S3: whole parts streamed).
        A hint; the default ignores it."""

    @abstractmethod
    async def write(self, data: bytes | bytearray) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def commit(self) -> None: ...

    @abstractmethod
    async def cancel(self) -> None: ...

    def held(self) -> bytes | None:
        """The whole content when this writer holds it in memory and nothing of it is stored
        elsewhere yet (a small session on S3: its bytes travel in the state object), so the
        caller may store it by other means; None otherwise (the default)."""
        return None


class StorageDriver(ABC):
    name: str

    @abstractmethod
    async def get(self, key: str) -> bytes:
        """The whole object (for small objects: links, manifests, state)."""

    @abstractmethod
    async def put(self, key: str, data: bytes) -> None:
        """Write atomically: readers see the old object or the new one, never a part."""

    @abstractmethod
    async def create(self, key: str, data: bytes) -> None:
        """Write atomically only if no object exists under ``key`` (else ``AlreadyExists``).

        One winner among concurrent creators, on every replica: the building block for
        leases, claims and queues (S3 ``If-None-Match: *``, ``O_EXCL``-like ``link`` on disk).
        """

    @abstractmethod
    async def stat(self, key: str) -> ObjectInfo:
        """Size and modification time of an object (a directory is not one: PathNotFound)."""

    @abstractmethod
    def read(self, key: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream ``length`` bytes (default: to the end) starting at ``offset``."""

    @abstractmethod
    async def list(self, prefix: str) -> list[str]:
        """Names of the direct children (objects and directories) of a directory, sorted."""

    @abstractmethod
    def walk(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Every object below ``prefix``, recursively, in no particular order."""

    @abstractmethod
    async def delete(self, key: str, *, prune: bool = True) -> None:
        """Delete one object; a missing one is not an error.

        ``prune``: also remove the directory the delete empties. Pass False for a directory
        that others create objects in concurrently (a journal, a queue): on some stores
        (SeaweedFS) an object created while its directory is pruned can drop out of listings.
        """

    async def delete_many(self, keys: Sequence[str], *, prune: bool = True) -> None:
        """Delete objects in the order given (a missing one is not an error). Stores with batch
        deletes do it in few requests (S3: one DeleteObjects per 1,000 keys). ``prune`` as
        for ``delete``."""
        for key in keys:
            await self.delete(key, prune=prune)

    @abstractmethod
    async def delete_tree(self, prefix: str) -> None:
        """Delete every object below the directory ``prefix`` (and abort writers in progress
        there); a missing directory is not an error. An object named ``prefix`` is kept."""

    @abstractmethod
    async def move(self, src: str, dst: str) -> None:
        """Atomically make ``src``'s content visible at ``dst`` and remove ``src``."""

    @abstractmethod
    async def writer(self, key: str, append: bool = False) -> FileWriter:
        """Start (or, with ``append``, continue) an object written in pieces.

        Appending writers are exclusive: while one is writing, another's ``write`` or
        ``close`` raises ``WriterBusy``, so two chunks can never interleave or overwrite each
        other. Opening never waits or fails on a busy object, so ``size`` can be read any time.
        """

    async def redirect_url(self, key: str, expires_in: int) -> str | None:
        """A URL a client can GET the object from directly, or None to stream it ourselves."""
        return None

    async def start(self) -> None:
        """Open clients and connection pools (called once at start-up)."""

    async def abort_stale_uploads(self, older_than: float) -> int:
        """Abort the store's own unfinished uploads (S3 multipart uploads) begun before
        ``older_than`` (epoch seconds); returns how many. Stores without such uploads: 0."""
        return 0

    async def ping(self) -> None:
        """Raise if the store cannot be reached (used by /readyz)."""
        await self.list("")

    async def close(self) -> None:
        """Release connections and clients."""
