"""The storage driver interface: every driver (filesystem, s3) implements exactly this.

Keys are ``/``-separated paths relative to the driver's root, always built by ``paths`` from
validated names and digests. A "directory" is any key prefix that has objects below it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass


class PathNotFound(Exception):
    """The key (or, for ``list``, the prefix) does not exist."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class WriterBusy(Exception):
    """Another writer (in this process or another replica) holds the object open for append."""


class StorageUnavailable(Exception):
    """The backing store could not be reached (after the driver's own retries)."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    modified: float  # seconds since the epoch
    is_dir: bool = False


class FileWriter(ABC):
    """An appendable object under construction, invisible to readers until ``commit``.

    ``close`` keeps what was written so another process may reopen the writer with
    ``append=True`` and continue; ``cancel`` throws it away.
    """

    size: int

    @abstractmethod
    async def write(self, data: bytes) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def commit(self) -> None: ...

    @abstractmethod
    async def cancel(self) -> None: ...


class StorageDriver(ABC):
    name: str

    @abstractmethod
    async def get(self, key: str) -> bytes:
        """The whole object (for small objects: links, manifests, state)."""

    @abstractmethod
    async def put(self, key: str, data: bytes) -> None:
        """Write atomically: readers see the old object or the new one, never a part."""

    @abstractmethod
    async def stat(self, key: str) -> ObjectInfo:
        """Size and modification time of an object, or of a directory (size 0)."""

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
    async def delete(self, key: str) -> None:
        """Delete an object or a whole directory; a missing key is not an error."""

    @abstractmethod
    async def move(self, src: str, dst: str) -> None:
        """Atomically make ``src``'s content visible at ``dst`` and remove ``src``."""

    @abstractmethod
    async def writer(self, key: str, append: bool = False) -> FileWriter:
        """Start (or, with ``append``, continue) an object written in pieces.

        An appending writer is exclusive where the store can enforce it: a second one raises
        ``WriterBusy`` until the first is closed, so two chunks can never interleave.
        """

    async def redirect_url(self, key: str, expires_in: int) -> str | None:
        """A URL a client can GET the object from directly, or None to stream it ourselves."""
        return None

    async def start(self) -> None:
        """Open clients and connection pools (called once at start-up)."""

    async def ping(self) -> None:
        """Raise if the store cannot be reached (used by /readyz)."""
        await self.list("")

    async def close(self) -> None:
        """Release connections and clients."""
