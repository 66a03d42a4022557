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

from .driver import FileWriter, ObjectInfo, PathNotFound, StorageDriver, WriterBusy

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

    async def stat(self, key: str) -> ObjectInfo:
        try:
            st = os.stat(self._fspath(key))
        except (FileNotFoundError, NotADirectoryError):
            raise PathNotFound(key) from None
        is_dir = stat.S_ISDIR(st.st_mode)
        return ObjectInfo(key, 0 if is_dir else st.st_size, st.st_mtime, is_dir)

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

    async def delete(self, key: str) -> None:
        path = self._path(key)

        def _delete() -> None:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            _prune_empty_parents(path.parent, self.root)

        await asyncio.to_thread(_delete)

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
                except FileNotFoundError:
                    if attempt == 2:
                        raise

        await asyncio.to_thread(_move)

    async def writer(self, key: str, append: bool = False) -> FileWriter:
        path = self._path(key)

        def _open() -> _FilesystemWriter:
            handle = _retry_missing_parent(path, "ab" if append else "wb")
            if append:
                # flock is per open file, so it excludes writers in this process and in every
                # other process on the host sharing the directory.
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    raise WriterBusy(key) from None
            return _FilesystemWriter(path, handle)

        return await asyncio.to_thread(_open)

    async def ping(self) -> None:
        await asyncio.to_thread(os.stat, self.root)


class _FilesystemWriter(FileWriter):
    def __init__(self, path: Path, handle: BinaryIO) -> None:
        self._path = path
        self._handle = handle
        self.size = handle.tell()

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(self._handle.write, data)
        self.size += len(data)

    async def close(self) -> None:
        await asyncio.to_thread(self._handle.close)

    async def commit(self) -> None:
        def _commit() -> None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()

        await asyncio.to_thread(_commit)

    async def cancel(self) -> None:
        def _cancel() -> None:
            self._handle.close()
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()

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
            # mkdir itself can fail when a concurrent delete prunes a parent it just created.
            path.parent.mkdir(parents=True, exist_ok=True)
            return path.open(mode)  # type: ignore[return-value]
        except FileNotFoundError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def _atomic_write(path: Path, data: bytes, attempts: int = 5) -> None:
    for attempt in range(attempts):
        tmp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}")
        try:
            with _retry_missing_parent(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
            return
        except FileNotFoundError:
            # A concurrent delete of the directory (GC removing a blob directory) took the
            # temporary file with it: the write lands after that delete instead.
            if attempt == attempts - 1:
                raise
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise


def _prune_empty_parents(directory: Path, root: Path) -> None:
    """Remove directories left empty by a delete, up to (not including) the root."""
    while directory != root and root in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent
