"""Prometheus exposition: storage health gauges, a metrics port of its own, one scrape for all
uvicorn workers.

Metrics come from OpenTelemetry (storage call durations, active requests) through its Prometheus
reader, from the request-duration collector in requests.py, and from a few ``prometheus_client``
gauges defined here. The OpenTelemetry reader
is not multiprocess-aware (``PROMETHEUS_MULTIPROC_DIR`` only covers ``prometheus_client``'s own
metric types), so with ``http.workers > 1`` Berth does the equivalent itself:

* every worker answers its own exposition on a Unix socket ``worker-<pid>.sock`` in a private
  directory (``BERTH_INTERNAL_METRICS_DIR``, created by ``berth serve`` under ``/tmp``);
* the supervisor process serves ``observability.metrics_port``; each scrape asks every live
  worker and merges the answers: counters, histograms and summaries are summed, gauges summed
  too except the few in ``MERGE_MIN``/``MERGE_MAX``; ``berth_metrics_workers`` says how many
  workers answered. A worker that died takes its counts with it (Prometheus sees a counter
  reset, which ``rate()`` handles).

With one worker the metrics port serves the process's own registry directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

METRICS_DIR_ENV = "BERTH_INTERNAL_METRICS_DIR"
SOCKET_GLOB = "worker-*.sock"

STORAGE_UP = Gauge(
    "berth_storage_up",
    "1 when the last storage health check of this process succeeded, 0 when it failed "
    "(merged over workers: the minimum).",
)
STORAGE_CHECKED = Gauge(
    "berth_storage_last_check_timestamp_seconds",
    "Unix time of the last storage health check (merged over workers: the latest).",
)
STORAGE_CHECK_DURATION = Gauge(
    "berth_storage_check_duration_seconds", "Duration of the last storage health check."
)

# Registry events, per endpoint (docs/events.md). Pending is set by the process delivering to
# the endpoint (one replica at a time) and 0 elsewhere, so sums over workers are right.
EVENTS_PENDING = Gauge(
    "berth_events_pending", "Events recorded and not yet delivered, dropped or dead.", ["endpoint"]
)
EVENTS_DELIVERED = Counter(
    "berth_events_delivered", "Events the endpoint accepted (2xx).", ["endpoint"]
)
EVENTS_FAILED = Counter(
    "berth_events_failed",
    "Delivery attempts that failed (retried until max_attempts).",
    ["endpoint"],
)
EVENTS_DEAD = Counter(
    "berth_events_dead_lettered",
    "Events that failed every attempt (kept as dead letters).",
    ["endpoint"],
)
EVENTS_DROPPED = Counter(
    "berth_events_dropped",
    "Oldest events dropped because the endpoint's queue was full.",
    ["endpoint"],
)
EVENTS_LATENCY = Histogram(
    "berth_events_delivery_latency_seconds",
    "Time from recording an event to the endpoint accepting it.",
    ["endpoint"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)

# How gauges of several workers combine (everything else is summed).
MERGE_MIN = {"berth_storage_up"}
MERGE_MAX = {
    "berth_storage_last_check_timestamp_seconds",
    "berth_storage_check_duration_seconds",
    "process_start_time_seconds",
    "process_max_fds",
    "python_info",
}


def record_storage_check(ok: bool, duration: float) -> None:
    STORAGE_UP.set(1 if ok else 0)
    STORAGE_CHECKED.set(time.time())
    STORAGE_CHECK_DURATION.set(duration)


# --------------------------------------------------------------------------- worker side


def worker_socket_path(directory: str, pid: int | None = None) -> str:
    return os.path.join(directory, f"worker-{pid or os.getpid()}.sock")


async def serve_worker_metrics(directory: str) -> asyncio.AbstractServer:
    """Answer this process's exposition on its Unix socket (one exposition per connection)."""
    path = worker_socket_path(directory)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(generate_latest(REGISTRY))
            await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_unix_server(answer, path=path)


# --------------------------------------------------------------------------- supervisor side


def _read_socket(path: str, timeout: float) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def collect_workers(directory: str, timeout: float = 5.0) -> list[str]:
    """The expositions of every live worker; sockets nobody answers on are removed."""
    texts = []
    for path in sorted(glob.glob(os.path.join(directory, SOCKET_GLOB))):
        try:
            texts.append(_read_socket(path, timeout).decode())
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a worker that is gone
        except OSError as exc:  # busy or hung: skip it this time
            log.warning("metrics: worker socket %s did not answer: %s", path, exc)
    return texts


def _merge_mode(family_type: str, family: str, sample: str) -> str:
    if sample.endswith("_created") or (family_type == "gauge" and family in MERGE_MIN):
        return "min"
    if family_type in ("info", "stateset") or (family_type == "gauge" and family in MERGE_MAX):
        return "max"
    return "sum"


def merge_expositions(texts: Iterable[str]) -> list[Metric]:
    """Merge Prometheus text expositions of several processes into one set of families."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = merged
                values[family.name] = {}
            table = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in table:
                    table[key] = sample.value
                elif _merge_mode(family.type, family.name, sample.name) == "min":
                    table[key] = min(table[key], sample.value)
                elif _merge_mode(family.type, family.name, sample.name) == "max":
                    table[key] = max(table[key], sample.value)
                else:
                    table[key] = table[key] + sample.value
    for name, metric in families.items():
        for (sample_name, labels), value in values[name].items():
            metric.add_sample(sample_name, dict(labels), value)
    return list(families.values())


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def aggregate_workers(directory: str) -> bytes:
    texts = collect_workers(directory)
    families = merge_expositions(texts)
    workers = Metric("berth_metrics_workers", "Worker processes included in this scrape.", "gauge")
    workers.add_sample("berth_metrics_workers", {}, float(len(texts)))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*families, workers]))  # type: ignore[arg-type]
    return generate_latest(registry)


def local_exposition() -> bytes:
    return generate_latest(REGISTRY)


def exposition_source(directory: str | None) -> Callable[[], bytes]:
    if directory is None:
        return local_exposition
    return lambda: aggregate_workers(directory)


def start_metrics_server(host: str, port: int, source: Callable[[], bytes]) -> ThreadingHTTPServer:
    """Serve ``GET /metrics`` (only) on ``host:port`` from a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "berth-metrics"
        sys_version = ""

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404)
                return
            try:
                body = source()
            except Exception:  # a scrape must never take the server down
                log.exception("metrics: exposition failed")
                self.send_error(500)
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes are not access-logged

    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Server(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True

    server = Server((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="berth-metrics", daemon=True).start()
    return server


__all__ = [
    "METRICS_DIR_ENV",
    "aggregate_workers",
    "exposition_source",
    "merge_expositions",
    "record_storage_check",
    "serve_worker_metrics",
    "start_metrics_server",
]
