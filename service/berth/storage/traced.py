"""A driver wrapper that records a span and a duration sample for every storage call."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TypeVar

from opentelemetry import metrics, trace

from .driver import FileWriter, ObjectInfo, StorageDriver

T = TypeVar("T")


class TracedDriver(StorageDriver):
    def __init__(self, inner: StorageDriver, tracer: trace.Tracer, duration: metrics.Histogram):
        self.inner = inner
        self.name = inner.name
        self._tracer = tracer
        self._duration = duration

    def _span(self, op: str, key: str) -> trace.Span:
        span = self._tracer.start_span(f"storage.{op}", attributes={"storage.key": key})
        span.set_attribute("storage.driver", self.name)
        return span

    async def _call(self, op: str, key: str, coro: Awaitable[T]) -> T:
        start = time.perf_counter()
        with trace.use_span(self._span(op, key), end_on_exit=True):
            try:
                return await coro
            finally:
                self._duration.record(time.perf_counter() - start, {"op": op})

    async def get(self, key: str) -> bytes:
        return await self._call("get", key, self.inner.get(key))

    async def put(self, key: str, data: bytes) -> None:
        await self._call("put", key, self.inner.put(key, data))

    async def stat(self, key: str) -> ObjectInfo:
        return await self._call("stat", key, self.inner.stat(key))

    async def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        with trace.use_span(self._span("read", key), end_on_exit=True):
            async for chunk in self.inner.read(key, offset, length):
                yield chunk

    async def list(self, prefix: str) -> list[str]:
        return await self._call("list", prefix, self.inner.list(prefix))

    async def walk(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        with trace.use_span(self._span("walk", prefix), end_on_exit=True):
            async for info in self.inner.walk(prefix):
                yield info

    async def delete(self, key: str, *, prune: bool = True) -> None:
        await self._call("delete", key, self.inner.delete(key, prune=prune))

    async def delete_many(self, keys: Sequence[str], *, prune: bool = True) -> None:
        first = keys[0] if keys else ""
        await self._call("delete_many", first, self.inner.delete_many(keys, prune=prune))

    async def delete_tree(self, prefix: str) -> None:
        await self._call("delete_tree", prefix, self.inner.delete_tree(prefix))

    async def create(self, key: str, data: bytes) -> None:
        await self._call("create", key, self.inner.create(key, data))

    async def abort_stale_uploads(self, older_than: float) -> int:
        return await self._call(
            "abort_stale_uploads", "", self.inner.abort_stale_uploads(older_than)
        )

    async def move(self, src: str, dst: str) -> None:
        await self._call("move", src, self.inner.move(src, dst))

    async def writer(self, key: str, append: bool = False) -> FileWriter:
        return await self._call("writer", key, self.inner.writer(key, append))

    async def redirect_url(self, key: str, expires_in: int) -> str | None:
        return await self._call("redirect_url", key, self.inner.redirect_url(key, expires_in))

    async def start(self) -> None:
        await self.inner.start()

    async def ping(self) -> None:
        await self._call("ping", "", self.inner.ping())

    async def close(self) -> None:
        await self.inner.close()
