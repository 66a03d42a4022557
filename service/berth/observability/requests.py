"""HTTP request metrics, recorded with plain counters and exposed to Prometheus.

The same two series OpenTelemetry's HTTP semantic conventions define, and FastAPI's native
telemetry used to record through the OpenTelemetry SDK: ``http_server_request_duration_seconds``
(a histogram by ``http_request_method``, ``http_route``, ``http_response_status_code``,
``network_protocol_version``, ``url_scheme`` and, for failures, ``error_type``) and
``http_server_active_requests``. Recording one request through the SDK cost about 30 µs of CPU
(attribute validation and hashing on every measurement), a sizeable share of a cached blob HEAD;
here it is a dictionary lookup, a bisection and a few additions. The histogram is read at scrape
time as a ``prometheus_client`` collector (so the multi-worker merge in metrics.py sees it like
any other family); the active-request counts through an OpenTelemetry observable instrument,
also read only at scrape time (which keeps the reader's ``target_info`` in every exposition).

The route template comes from the dispatcher (api/dispatch.py) through a ``RouteSlot`` in the
scope: a middleware that copies the scope (auth rewriting the query) still shares the slot.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Iterator

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ROUTE_SLOT = "berth.route"

# FastAPI's (and OpenTelemetry's recommended) boundaries for http.server.request.duration.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_BUCKET_LABELS = [*(repr(float(b)) for b in BUCKETS), "+Inf"]
DURATION_LABELS = [
    "error_type",
    "http_request_method",
    "http_response_status_code",
    "http_route",
    "network_protocol_version",
    "url_scheme",
]
_DEFAULT_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE", "QUERY"}
)


def known_methods() -> frozenset[str]:
    """Methods kept as they are in labels (others become ``_OTHER``), as OpenTelemetry's
    ``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS`` says."""
    value = os.environ.get("OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS", "").strip()
    if not value:
        return _DEFAULT_METHODS
    return frozenset(m.strip() for m in value.split(",") if m.strip())


class RouteSlot:
    """The template of the route a request took ("" until a route is chosen)."""

    __slots__ = ("route",)

    def __init__(self) -> None:
        self.route = ""


class _Series:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0


class RequestMetrics:
    """The collector. Written only from the event loop thread; a scrape from the metrics
    thread reads a snapshot of the tables (``list()`` of a dict copies it under the GIL)."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self._series: dict[tuple[str, ...], _Series] = {}
        # Seeded, so the OpenTelemetry reader always has data and exports ``target_info``.
        self._active: dict[tuple[str, str], int] = {("GET", "http"): 0}
        if registry is not None:
            registry.register(self)
            # Read at scrape time only: nothing per request goes through the SDK.
            metrics.get_meter("berth").create_observable_up_down_counter(
                "http.server.active_requests",
                callbacks=[self.observe_active],
                unit="{request}",
                description="Number of active HTTP server requests.",
            )

    def started(self, key: tuple[str, str]) -> None:
        self._active[key] = self._active.get(key, 0) + 1

    def finished(self, key: tuple[str, str], labels: tuple[str, ...], seconds: float) -> None:
        self._active[key] -= 1
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = _Series()
        series.counts[bisect_left(BUCKETS, seconds)] += 1
        series.sum += seconds

    def collect(self) -> Iterator[Metric]:
        duration = HistogramMetricFamily(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests.",
            labels=DURATION_LABELS,
        )
        for labels, series in list(self._series.items()):
            counts, total = list(series.counts), series.sum
            cumulative, buckets = 0, []
            for bound, count in zip(_BUCKET_LABELS, counts, strict=True):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            duration.add_metric(list(labels), buckets, total)
        yield duration

    def observe_active(self, options: CallbackOptions) -> Iterator[Observation]:
        for (method, scheme), value in list(self._active.items()):
            yield Observation(value, {"http.request.method": method, "url.scheme": scheme})

    def describe(self) -> Iterator[Metric]:
        return iter(())  # no eager collect() at registration


_PROCESS_METRICS: RequestMetrics | None = None


def process_metrics() -> RequestMetrics:
    """The process's collector, registered once (every app of the process records into it, as
    they all did into the global OpenTelemetry meter provider)."""
    global _PROCESS_METRICS
    if _PROCESS_METRICS is None:
        _PROCESS_METRICS = RequestMetrics()
    return _PROCESS_METRICS


def _exception_type(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


class RequestMetricsMiddleware:
    """Outermost of the application's middleware: counts every request, refused ones too.

    The duration runs until the application returns (the response is complete by then). A
    request that fails without a response is recorded as the 500 the server answers, with the
    exception's type in ``error_type``; a 5xx response has its status there (OpenTelemetry's
    ``error.type``).
    """

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self.methods = known_methods()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        method = scope["method"]
        if method not in self.methods:
            method = "_OTHER"
        scheme = scope.get("scheme", "http")
        active = (method, scheme)
        slot = scope[ROUTE_SLOT] = RouteSlot()
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.started(active)
        error = ""
        try:
            await self.app(scope, receive, send_status)
        except BaseException as exc:
            error = _exception_type(exc)
            raise
        finally:
            if not status:
                status = 500
                error = error or "incomplete_response"
            elif status >= 500 and not error:
                error = str(status)
            labels = (
                error,
                method,
                str(status),
                slot.route,
                scope.get("http_version", ""),
                scheme,
            )
            self.metrics.finished(active, labels, time.perf_counter() - start)


__all__ = [
    "ROUTE_SLOT",
    "RequestMetrics",
    "RequestMetricsMiddleware",
    "RouteSlot",
    "process_metrics",
]
