"""Build the configured storage driver."""

from __future__ import annotations

from ..config import Settings
from .driver import StorageDriver
from .filesystem import FilesystemDriver


def create_driver(settings: Settings) -> StorageDriver:
    storage = settings.storage
    if storage.driver == "filesystem":
        return FilesystemDriver(storage.filesystem.root)
    if storage.driver == "s3":
        from .s3 import S3Driver  # imported lazily: aiobotocore is only needed for S3

        return S3Driver(storage.s3)
    raise ValueError(f"unknown storage driver {storage.driver!r}")
