"""Readiness without storage, the storage health endpoint and gauge, draining, and the metrics
port (issue 11, points 7-9). Real `berth serve` processes: tests/e2e/test_serve_lifecycle.py."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from berth.app import create_app
from berth.config import Settings
from berth.observability.health import on_shutdown_signal
from berth.observability.metrics import merge_expositions


def settings(root: Path, **observability: Any) -> Settings:
    return Settings(
        storage={"filesystem": {"root": root}},
        observability={"access_log": False, "storage_check_seconds": 0, **observability},
    )


async def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_readyz_does_not_depend_on_storage(tmp_path: Path, monkeypatch: Any) -> None:
    app = create_app(settings(tmp_path))
    async with await client_for(app) as c:
        assert (await c.get("/healthz/storage")).status_code == 200
        assert REGISTRY.get_sample_value("berth_storage_up") == 1

        async def down() -> None:
            raise ConnectionError("object store unreachable")

        monkeypatch.setattr(app.state.registry.driver, "ping", down)
        assert (await c.get("/readyz")).status_code == 200  # the replica stays in the Service
        r = await c.get("/healthz/storage")
        assert r.status_code == 503
        assert r.json()["errors"][0]["detail"] == "ConnectionError"
        assert REGISTRY.get_sample_value("berth_storage_up") == 0
        assert REGISTRY.get_sample_value("berth_storage_last_check_timestamp_seconds") > 0
        metrics = (await c.get("/metrics")).text  # no metrics port: on the API port
        assert "berth_storage_up 0.0" in metrics


async def test_storage_check_is_bounded(tmp_path: Path, monkeypatch: Any) -> None:
    import asyncio

    app = create_app(settings(tmp_path, storage_check_timeout_seconds=0.2))

    async def hang() -> None:
        await asyncio.sleep(30)

    monkeypatch.setattr(app.state.registry.driver, "ping", hang)
    async with await client_for(app) as c:
        r = await c.get("/healthz/storage")
    assert r.status_code == 503 and "within 0.2s" in r.json()["errors"][0]["detail"]


async def test_readyz_answers_503_while_draining(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path))
    async with await client_for(app) as c:
        assert (await c.get("/readyz")).status_code == 200
        app.state.draining = True
        r = await c.get("/readyz")
        assert r.status_code == 503 and "shutting down" in r.text
        assert (await c.get("/healthz")).status_code == 200  # alive: no restart while draining


def test_shutdown_signal_marks_draining_then_runs_the_servers_handler() -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals need the main thread")
    calls: list[str] = []
    original = signal.signal(signal.SIGTERM, lambda *_: calls.append("server"))
    try:
        with on_shutdown_signal(lambda: calls.append("drain")):
            signal.raise_signal(signal.SIGTERM)
        assert calls == ["drain", "server"]
        signal.raise_signal(signal.SIGTERM)  # restored: the server's handler alone
        assert calls == ["drain", "server", "server"]
    finally:
        signal.signal(signal.SIGTERM, original)


async def test_metrics_port_takes_metrics_off_the_api_port(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path, metrics_port=9090))
    async with await client_for(app) as c:
        assert (await c.get("/metrics")).status_code == 404
        assert (await c.get("/v2/")).status_code == 200


def test_worker_expositions_merge() -> None:
    one = """# HELP reqs_total Requests.
# TYPE reqs_total counter
reqs_total{route="/v2/"} 3.0
reqs_created{route="/v2/"} 100.0
# HELP berth_storage_up Up.
# TYPE berth_storage_up gauge
berth_storage_up 1.0
# HELP active Active.
# TYPE active gauge
active 2.0
# HELP lat Latency.
# TYPE lat histogram
lat_bucket{le="1.0"} 1.0
lat_bucket{le="+Inf"} 2.0
lat_count 2.0
lat_sum 1.5
"""
    two = (
        one.replace("3.0", "4.0")
        .replace("berth_storage_up 1.0", "berth_storage_up 0.0")
        .replace("100.0", "50.0")
    )
    merged = {
        m.name: {(s.name, tuple(s.labels.items())): s.value for s in m.samples}
        for m in merge_expositions([one, two])
    }
    assert merged["reqs"][("reqs_total", (("route", "/v2/"),))] == 7
    assert merged["berth_storage_up"][("berth_storage_up", ())] == 0  # any worker down: down
    assert merged["active"][("active", ())] == 4
    assert merged["lat"][("lat_count", ())] == 4
    assert merged["lat"][("lat_bucket", (("le", "+Inf"),))] == 4
