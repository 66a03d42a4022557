"""A real webhook receiver for event tests: aiohttp on 127.0.0.1, in a thread of its own, so
both async service tests and sync e2e tests (a `berth serve` process) can post to it.

It records every request (headers and JSON body), and can be told to refuse (HTTP 503), to
hang (hold each request open until ``release``), or be stopped and started again on the same
port (a receiver that is down refuses connections). With ``tls`` (certificate and key files)
it serves https.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    raw: bytes

    @property
    def body(self) -> Any:
        return json.loads(self.raw)


class Receiver:
    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.tls = tls
        self.mode = "ok"  # ok | refuse | hang
        self.received: list[Received] = []
        self.hanging = 0  # requests held open right now
        self.port = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._released: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/hook"

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if self.mode == "hang":
            assert self._released is not None
            self.hanging += 1
            try:
                await self._released.wait()
            finally:
                self.hanging -= 1
        if self.mode == "refuse":
            return web.Response(status=503)
        with self._lock:
            self.received.append(Received(dict(request.headers), raw))
        return web.Response(status=204)

    async def _start(self) -> None:
        self._released = asyncio.Event()
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*self.tls)
        site = web.TCPSite(
            self._runner, "127.0.0.1", self.port, reuse_address=True, ssl_context=context
        )
        await site.start()
        if not self.port:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def _stop(self) -> None:
        if self._released is not None:
            self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> Receiver:
        """Listen (again, on the same port once it had one)."""
        self._call(self._start())
        return self

    def stop(self) -> None:
        self._call(self._stop())

    def release(self) -> None:
        """Let hanging requests go on (and stop hanging)."""
        self.mode = "ok"
        if self._released is not None:
            self._loop.call_soon_threadsafe(self._released.set)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def bodies(self) -> list[Any]:
        with self._lock:
            return [r.body for r in self.received]

    def _got(self, count: int) -> list[Received] | None:
        with self._lock:
            return list(self.received) if len(self.received) >= count else None

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Received]:
        """The requests received once there are ``count``; fails if they do not come within
        ``timeout`` (a generous bound for a loaded machine, not a timing assertion)."""
        deadline = time.monotonic() + timeout
        while (got := self._got(count)) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"received {len(self.received)} of {count} events")
            time.sleep(0.05)
        return got

    async def until(self, count: int, within: float = 60.0) -> list[Received]:
        """``wait_for`` for async tests (the registry's delivery runs in the same loop)."""
        deadline = time.monotonic() + within
        while (got := self._got(count)) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"received {len(self.received)} of {count} events")
            await asyncio.sleep(0.05)
        return got
