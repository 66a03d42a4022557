"""The filesystem driver: the embedded single-node default.

Metadata calls (stat, list, reading a link file) run inline: on a local disk they take a few
microseconds, far less than a hop to a worker thread, and they are most of a registry's requests.
Bulk data (blob reads and writes above ``INLINE_LIMIT``, renames, recursive deletes) runs in
worker threads so the event loop never waits on the disk for long. Every visible write goes
through a temporary file in the same directory and ``os.replace``, so a crash or a client
disconnect never leaves a partial object behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import stat
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import BinaryIO

from .driver import (
    AlreadyExists,
    FileWriter,
    ObjectInfo,
    PathNotFound,
    StorageDriver,
    StorageUnavailable,
    WriterBusy,
)

READ_CHUNK = 1024 * 1024
# Reads up to this size are served inline (page-cache hits cost less than a thread hop).
INLINE_LIMIT = 256 * 1024
_TMP_PREFIX = ".tmp-"


class FilesystemDriver(StorageDriver):
    name = "filesystem"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._root = str(self.root)

    def _path(self, key: str) -> Path:
        return Path(self._fspath(key))

    def _fspath(self, key: str) -> str:
        # Keys come from paths.py with validated parts; refuse anything that could escape anyway.
        parts = [p for p in key.split("/") if p]
        if any(p in (".", "..") or "\\" in p or "\0" in p for p in parts):
            raise ValueError(f"unsafe storage key: {key!r}")
        return os.path.join(self._root, *parts)

    async def get(self, key: str) -> bytes:
        try:
            with open(self._fspath(key), "rb") as handle:  # noqa: ASYNC230 (see module doc)
                return handle.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise PathNotFound(key) from None

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(_atomic_write, self._path(key), data)

    async def create(self, key: str, data: bytes) -> None:
        try:
            await asyncio.to_thread(_atomic_write, self._path(key), data, exclusive=True)
        except FileExistsError:
            raise AlreadyExists(key) from None

    async def stat(self, key: str) -> ObjectInfo:
        try:
            st = os.stat(self._fspath(key))
        except (FileNotFoundError, NotADirectoryError):
            raise PathNotFound(key) from None
        if stat.S_ISDIR(st.st_mode):
            raise PathNotFound(key)
        return ObjectInfo(key, st.st_size, st.st_mtime)

    async def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        try:
            handle = open(self._fspath(key), "rb")  # noqa: ASYNC230, SIM115 (closed below)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise PathNotFound(key) from None
        try:
            if offset:
                handle.seek(offset)
            remaining = length
            while remaining is None or remaining > 0:
                size = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                if size <= INLINE_LIMIT:
                    chunk = handle.read(size)
                else:
                    chunk = await asyncio.to_thread(handle.read, size)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            handle.close()

    async def list(self, prefix: str) -> list[str]:
        try:
            names = os.listdir(self._fspath(prefix))
        except (FileNotFoundError, NotADirectoryError):
            raise PathNotFound(prefix) from None
        return sorted(n for n in names if not n.startswith(_TMP_PREFIX))

    async def walk(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        base = self._path(prefix)
        root_len = len(str(self.root)) + 1

        def _walk() -> list[ObjectInfo]:
            found = []
            for dirpath, _dirs, files in os.walk(base):
                for f in files:
                    if f.startswith(_TMP_PREFIX):
                        continue
                    full = os.path.join(dirpath, f)
                    with contextlib.suppress(FileNotFoundError):
                        st = os.stat(full)
                        found.append(ObjectInfo(full[root_len:], st.st_size, st.st_mtime))
            return found

        for info in await asyncio.to_thread(_walk):
            yield info

    async def delete(self, key: str, *, prune: bool = True) -> None:
        path = self._path(key)

        def _delete() -> None:
            try:
                path.unlink()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return  # no such object (a directory is not one)
            if prune:
                _prune_empty_parents(path.parent, self.root)

        # Unlinking one small file costs microseconds: inline, like the other metadata calls.
        _delete()

    async def delete_tree(self, prefix: str) -> None:
        path = self._path(prefix)

        def _delete_tree() -> None:
            if not path.is_dir() or path.is_symlink():
                return
            shutil.rmtree(path, ignore_errors=True)
            _prune_empty_parents(path.parent, self.root)

        await asyncio.to_thread(_delete_tree)

    async def move(self, src: str, dst: str) -> None:
        src_path, dst_path = self._path(src), self._path(dst)

        def _move() -> None:
            for attempt in range(3):
                if not src_path.exists():
                    raise PathNotFound(src)
                try:
                    dst_path.parent.mkdir(parents=True, exist_ok=True)
                    with _exclusive(src_path):
                        os.replace(src_path, dst_path)
                    return
                except (FileNotFoundError, FileExistsError):  # a concurrent prune: see below
                    if attempt == 2:
                        raise

        await asyncio.to_thread(_move)

    async def writer(self, key: str, append: bool = False) -> FileWriter:
        path = self._path(key)
        if not append:
            # A new object: written under a hidden temporary name, moved into place by commit.
            staging = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}")
            handle = await asyncio.to_thread(_retry_missing_parent, staging, "wb")
            return _FilesystemWriter(key, path, handle, 0, (staging, self.root))
        try:
            size = os.stat(self._fspath(key)).st_size
        except (FileNotFoundError, NotADirectoryError):
            size = 0
        # Opened (and locked) at the first write: reading ``size`` creates nothing.
        return _FilesystemWriter(key, path, None, size)

    async def ping(self) -> None:
        await asyncio.to_thread(os.stat, self.root)


class _FilesystemWriter(FileWriter):
    def __init__(
        self,
        key: str,
        path: Path,
        handle: BinaryIO | None,
        size: int,
        staging: tuple[Path, Path] | None = None,
    ) -> None:
        self._key = key
        self._path = path
        self._handle = handle
        self.size = size
        # A new object's temporary file (until commit or close), and the root: a cancelled new
        # object leaves no directory behind (a wrong digest must not create blob directories).
        self._staging = staging

    def _place(self) -> None:
        """Move a new object's temporary file to its name (atomic: readers see all or none)."""
        staging, self._staging = self._staging, None
        if staging is None:
            return
        try:
            os.replace(staging[0], self._path)
        except FileNotFoundError:
            # A concurrent delete of the directory (GC removing a blob directory) took it.
            raise StorageUnavailable(f"{self._key}: removed while being written; retry") from None

    def _lock(self) -> BinaryIO:
        """Open for append and take the appenders' lock (flock is per open file, so it excludes
        writers in this process and in every other process on the host sharing the directory);
        the file must still be as long as when this writer read its size."""
        if self._handle is not None:
            return self._handle
        handle = _retry_missing_parent(self._path, "ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(handle.fileno()).st_size != self.size:
                raise BlockingIOError  # another writer appended since we looked
        except BlockingIOError:
            handle.close()
            raise WriterBusy(self._key) from None
        self._handle = handle
        return handle

    async def write(self, data: bytes | bytearray) -> None:
        def _write() -> None:
            handle = self._lock()
            handle.write(data)
            handle.flush()  # in the file before ``size`` counts it

        await asyncio.to_thread(_write)
        self.size += len(data)

    async def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            await asyncio.to_thread(handle.close)
        if self._staging is not None:  # a new object: kept under its name, to be continued
            await asyncio.to_thread(self._place)

    async def commit(self) -> None:
        def _commit() -> None:
            handle = self._lock()
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            self._handle = None
            self._place()

        await asyncio.to_thread(_commit)

    async def cancel(self) -> None:
        def _cancel() -> None:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
            staging, self._staging = self._staging, None
            with contextlib.suppress(FileNotFoundError):
                (staging[0] if staging else self._path).unlink()
            if staging:
                _prune_empty_parents(staging[0].parent, staging[1])

        await asyncio.to_thread(_cancel)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold the appenders' lock on a file (directories need none) while it is renamed, so no
    appending writer can still be adding bytes to what becomes the destination."""
    if path.is_dir():
        yield
        return
    with path.open("rb") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WriterBusy(str(path)) from None
        yield


def _retry_missing_parent(path: Path, mode: str) -> BinaryIO:
    """Open for writing, creating parents; retry if a concurrent delete pruned them meanwhile."""
    for attempt in range(5):
        try:
            # mkdir itself can fail when a concurrent delete prunes a parent it just created:
            # FileNotFoundError, or FileExistsError when the prune lands between mkdir seeing
            # the directory and checking that it is one.
            path.parent.mkdir(parents=True, exist_ok=True)
            return path.open(mode)  # type: ignore[return-value]
        except (FileNotFoundError, FileExistsError):
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def _atomic_write(path: Path, data: bytes, *, exclusive: bool = False, attempts: int = 5) -> None:
    """Write ``data`` to a temporary file in the target directory, then move it into place:
    ``os.replace`` (readers see the old object or the new one), or with ``exclusive`` ``link``,
    which fails with FileExistsError when the name exists, so exactly one of concurrent
    creators wins."""
    for attempt in range(attempts):
        tmp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}")
        try:
            with _retry_missing_parent(tmp, "wb") as handle:
                handle.write(data)
            (os.link if exclusive else os.replace)(tmp, path)
            return
        except FileNotFoundError:
            # A concurrent delete of the directory (GC removing a blob directory) took the
            # temporary file with it: the write lands after that delete instead.
            if attempt == attempts - 1:
                raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _prune_empty_parents(directory: Path, root: Path) -> None:
    """Remove directories left empty by a delete, up to (not including) the root."""
    while directory != root and root in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent
