"""A lean ASGI middleware: one span, one metric sample and one access-log line per request."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from typing import Any

from opentelemetry.trace import SpanKind
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .telemetry import Instruments

access_log = logging.getLogger("berth.access")


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, instruments: Instruments, log_requests: bool) -> None:
        self.app = app
        self.instruments = instruments
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "bytes": 0}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif message["type"] == "http.response.body":
                state["bytes"] += len(message.get("body", b""))
            await send(message)

        method = scope["method"]
        tracer = self.instruments.tracer
        span_cm = (
            tracer.start_as_current_span(f"{method} {scope['path']}", kind=SpanKind.SERVER)
            if tracer
            else nullcontext()
        )
        with span_cm as span:
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                elapsed = time.perf_counter() - start
                route = scope.get("route")
                template = getattr(route, "path", "unmatched")
                attrs = {"method": method, "route": template, "status": state["status"]}
                self.instruments.request_duration.record(elapsed, attrs)
                self.instruments.request_bytes.add(state["bytes"], attrs)
                if span is not None:
                    span.set_attribute("http.route", template)
                    span.set_attribute("http.response.status_code", state["status"])
                if self.log_requests:
                    access_log.info(
                        "%s %s %s",
                        method,
                        scope["path"],
                        state["status"],
                        extra={
                            "fields": {
                                "method": method,
                                "path": scope["path"],
                                "status": state["status"],
                                "bytes": state["bytes"],
                                "duration_ms": round(elapsed * 1000, 2),
                                "client": (scope.get("client") or ("", 0))[0],
                            }
                        },
                    )
