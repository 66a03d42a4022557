"""One interface for the S3 requests the driver makes on small objects and listings.

Two implementations: ``fastpath.FastS3`` (the lean client: SigV4 signed here, sent with
aiohttp) and ``botocore_transport.BotocoreTransport`` (the aiobotocore client). The driver
picks one in ``start()`` and calls only this interface; multipart uploads, ranged reads and
``list_multipart_uploads`` stay on the aiobotocore client.

Both implementations retry transient failures (throttling, 5xx, ``RequestTimeout``,
``RequestTimeTooSkewed``, resets and timeouts) up to ``max_attempts`` and raise only the
driver's errors (``errors.classify``): ``PathNotFound``, ``WriterBusy`` (a failed condition),
``StorageUnavailable``, ``StorageRefused``; ``copy`` also raises ``CopyTooLarge``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Head:
    size: int
    modified: float  # seconds since the epoch


@dataclass(frozen=True, slots=True)
class Entry:
    key: str  # the full bucket key
    size: int
    modified: float


@dataclass(frozen=True, slots=True)
class ListPage:
    """One ListObjectsV2 page; ``next_token`` is set only when the listing goes on."""

    objects: list[Entry]
    prefixes: list[str]  # CommonPrefixes, with their trailing delimiter
    next_token: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteFailure:
    key: str
    code: str
    message: str = ""


class CopyTooLarge(Exception):
    """CopyObject refused the source as too large (over 5 GiB): copy it part by part."""


class S3Transport(ABC):
    """Single-object requests and listings on one bucket. Keys are full bucket keys; ``key``
    arguments name the object in errors (the driver's key, without the root prefix)."""

    name: str

    @abstractmethod
    async def get(self, full: str, key: str) -> tuple[bytes, str]:
        """GetObject: the whole body and its ETag."""

    @abstractmethod
    async def head(self, full: str, key: str) -> Head:
        """HeadObject: size and modification time."""

    @abstractmethod
    async def put(
        self,
        full: str,
        key: str,
        data: bytes,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        """PutObject (``If-Match`` / ``If-None-Match: *``; a failed condition raises
        WriterBusy). Returns the new ETag."""

    @abstractmethod
    async def delete(self, full: str, key: str) -> None:
        """DeleteObject (a missing key is not an error)."""

    @abstractmethod
    async def delete_many(self, fulls: list[str]) -> list[DeleteFailure]:
        """One DeleteObjects of at most 1000 keys, handled in order; the keys that failed."""

    @abstractmethod
    async def list_page(self, prefix: str, delimiter: bool, token: str | None) -> ListPage:
        """One ListObjectsV2 page (delimiter ``/`` when ``delimiter``)."""

    @abstractmethod
    async def copy(self, src_full: str, dst_full: str, key: str) -> None:
        """Server-side CopyObject; raises CopyTooLarge when the store wants a multipart copy."""

    @abstractmethod
    async def create_upload(self, full: str, key: str) -> str:
        """CreateMultipartUpload (with the object settings of a PutObject); its upload id."""

    @abstractmethod
    async def upload_part(
        self,
        full: str,
        key: str,
        upload_id: str,
        number: int,
        length: int,
        body: bytes | bytearray | AsyncIterable[bytes | memoryview],
    ) -> str:
        """UploadPart of exactly ``length`` bytes; returns the ETag. A bytes-like ``body`` is
        retried like any request; chunks are sent as they come and never retried (the bytes
        are not kept): the caller sends the part again from its own copy, or gives it up."""

    @abstractmethod
    async def complete_upload(self, full: str, key: str, upload_id: str, etags: list[str]) -> None:
        """CompleteMultipartUpload of parts 1..n with these ETags (an error S3 reports after
        its 200 raises too)."""

    @abstractmethod
    async def abort_upload(self, full: str, key: str, upload_id: str) -> None:
        """AbortMultipartUpload; an unknown upload raises PathNotFound."""

    @abstractmethod
    async def ping(self) -> None:
        """HeadBucket: the bucket is reachable with these credentials."""

    @abstractmethod
    async def presign(self, full: str, expires_in: int) -> str:
        """A presigned GET URL for the public endpoint (no network)."""

    async def close(self) -> None:
        """Release what the transport owns (not the shared aiobotocore client)."""
