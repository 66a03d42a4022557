"""The access log: one JSON line per request (spans come from FastAPI's native OpenTelemetry
support, which wraps this middleware, so the line carries the request's trace id; HTTP metrics
from requests.py)."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("berth.access")


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status, sent = 500, 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            method, path = scope["method"], scope["path"]
            access_log.info(
                "%s %s %s",
                method,
                path,
                status,
                extra={
                    "fields": {
                        "method": method,
                        "path": path,
                        "status": status,
                        "bytes": sent,
                        "duration_ms": round((time.perf_counter() - start) * 1000, 2),
                        "client": (scope.get("client") or ("", 0))[0],
                    }
                },
            )
