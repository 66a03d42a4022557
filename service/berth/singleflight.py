"""One task per key: concurrent callers asking for the same thing share one piece of work."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
T = TypeVar("T")


class SingleFlight(Generic[K, T]):
    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[T]] = {}

    def running(self, key: K) -> asyncio.Task[T] | None:
        task = self._tasks.get(key)
        # A task of another event loop (an object that outlived its loop) is nobody's work.
        if task is not None and task.get_loop() is not asyncio.get_running_loop():
            return None
        return task

    def start(self, key: K, work: Callable[[], Awaitable[T]]) -> tuple[asyncio.Task[T], bool]:
        """The task for ``key`` and whether this call started it."""
        task = self.running(key)
        if task is not None:
            return task, False
        task = asyncio.ensure_future(work())
        self._tasks[key] = task

        def done(t: asyncio.Task[T]) -> None:
            if self._tasks.get(key) is t:
                del self._tasks[key]
            with contextlib.suppress(asyncio.CancelledError):
                t.exception()  # retrieved: a failure every waiter abandoned is not logged twice

        task.add_done_callback(done)
        return task, True

    async def run(self, key: K, work: Callable[[], Awaitable[T]]) -> T:
        """The shared result; a caller that gives up (cancelled) never cancels the work."""
        task, _ = self.start(key, work)
        return await asyncio.shield(task)


__all__ = ["SingleFlight"]
