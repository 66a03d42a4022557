"""Upload sessions at the registry layer: bounded memory, disconnects, atomic commit."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from berth.registry.digest import Digest
from berth.registry.errors import BlobUnknown, DigestInvalid
from berth.registry.registry import Registry
from berth.registry.uploads import BUFFER_SIZE
from berth.storage.driver import FileWriter
from berth.storage.filesystem import FilesystemDriver

from .conftest import make_settings


class RecordingDriver(FilesystemDriver):
    """Records the size of every write an upload makes."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.write_sizes: list[int] = []

    async def writer(self, key: str, append: bool = False) -> FileWriter:
        inner = await super().writer(key, append)
        sizes = self.write_sizes
        original = inner.write

        async def write(data: bytes) -> None:
            sizes.append(len(data))
            await original(data)

        inner.write = write  # type: ignore[method-assign]
        return inner


async def chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def test_memory_per_upload_is_bounded(tmp_path: Path) -> None:
    driver = RecordingDriver(tmp_path)
    registry = Registry(driver, make_settings(tmp_path))
    data = os.urandom(20 * 1024 * 1024)
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    session = await registry.uploads.start("app")
    await registry.uploads.append("app", session.upload_id, chunks(data))
    await registry.uploads.complete("app", session.upload_id, digest)
    assert sum(driver.write_sizes) == len(data)
    # Never more than one buffer plus one incoming chunk is held at once.
    assert max(driver.write_sizes) <= BUFFER_SIZE + 64 * 1024
    assert len(driver.write_sizes) >= 15
    assert await registry.blobs.size_in("app", digest) == len(data)


async def test_client_disconnect_leaves_no_blob_and_upload_resumes(tmp_path: Path) -> None:
    registry = Registry(FilesystemDriver(tmp_path), make_settings(tmp_path))
    data = os.urandom(5 * 1024 * 1024)
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())

    async def broken() -> AsyncIterator[bytes]:
        async for chunk in chunks(data[: 3 * 1024 * 1024]):
            yield chunk
        raise ConnectionResetError("client went away")

    session = await registry.uploads.start("app")
    with pytest.raises(ConnectionResetError):
        await registry.uploads.append("app", session.upload_id, broken())
    with pytest.raises(BlobUnknown):
        await registry.blobs.size_in("app", digest)
    assert not list((tmp_path / "docker/registry/v2").glob("blobs/**/data"))

    # The client asks where to resume and sends the rest from there.
    offset = (await registry.uploads.status("app", session.upload_id)).offset
    assert 0 < offset <= 3 * 1024 * 1024
    await registry.uploads.append(
        "app", session.upload_id, chunks(data[offset:]), (offset, len(data) - 1)
    )
    await registry.uploads.complete("app", session.upload_id, digest)
    assert await registry.blobs.size_in("app", digest) == len(data)


async def test_wrong_digest_cancels_the_session(tmp_path: Path) -> None:
    registry = Registry(FilesystemDriver(tmp_path), make_settings(tmp_path))
    session = await registry.uploads.start("app")
    await registry.uploads.append("app", session.upload_id, chunks(b"some bytes"))
    wrong = Digest("sha256", "0" * 64)
    with pytest.raises(DigestInvalid):
        await registry.uploads.complete("app", session.upload_id, wrong)
    assert not (tmp_path / "docker/registry/v2/blobs").exists()
    assert not (
        tmp_path / f"docker/registry/v2/repositories/app/_uploads/{session.upload_id}"
    ).exists()
