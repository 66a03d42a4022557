"""The ASGI application: routers, error handlers, telemetry and the registry, wired once."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import Response

from .api import base, blobs, dispatch, listing, manifests, referrers, uploads
from .api.common import EXCEPTION_HANDLERS
from .api.mirror import MirrorRewrite
from .auth import install as install_auth
from .config import SETTINGS_ENV, Settings
from .events.service import EventDelivery
from .gc.background import Maintenance, config_file_from_environment
from .observability.health import check_periodically, on_shutdown_signal
from .observability.logging import configure_logging
from .observability.metrics import METRICS_DIR_ENV, serve_worker_metrics
from .observability.middleware import AccessLogMiddleware
from .observability.requests import RequestMetricsMiddleware, process_metrics
from .observability.telemetry import setup_telemetry
from .registry.freshness import Generation
from .registry.registry import Registry
from .storage.driver import StorageDriver
from .storage.factory import create_driver
from .storage.traced import TracedDriver


def create_app(
    settings: Settings | None = None,
    driver: StorageDriver | None = None,
    config_file: str | None = None,
) -> FastAPI:
    """``config_file``: re-read for settings that apply live (storage.read_only; gc.background)."""
    settings = settings or Settings()
    instruments = setup_telemetry(settings.observability)
    driver = driver or create_driver(settings)
    if instruments.tracer is not None:
        driver = TracedDriver(driver, instruments.tracer, instruments.storage_duration)
    registry = Registry(driver, settings, Generation.from_environment())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        obs = settings.observability
        await registry.driver.start()
        maintenance = Maintenance(registry.driver, settings, config_file)
        await maintenance.start()
        events = None
        if registry.recorder is not None:  # off the request path: one loop per endpoint
            events = EventDelivery(
                registry.driver, settings.notifications, registry.recorder.journal
            )
            await events.start()
        background: list[asyncio.Task[None]] = []
        if obs.storage_check_seconds > 0:
            check = check_periodically(
                registry.driver, obs.storage_check_seconds, obs.storage_check_timeout_seconds
            )
            background.append(asyncio.create_task(check, name="berth-storage-check"))
        metrics_dir = os.environ.get(METRICS_DIR_ENV)
        worker_metrics = None
        if obs.metrics and obs.metrics_port is not None and metrics_dir:
            worker_metrics = await serve_worker_metrics(metrics_dir)

        def drain() -> None:
            app.state.draining = True

        try:
            with on_shutdown_signal(drain):
                yield
                drain()
        finally:
            drain()
            if worker_metrics is not None:
                worker_metrics.close()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await maintenance.stop()
            if events is not None:
                await events.stop()
            await registry.close()

    app = FastAPI(
        title="Berth",
        description="OCI Distribution API v1.1",
        lifespan=lifespan,
        openapi_url=None,  # the API is the OCI spec; no generated schema on a public port
        docs_url=None,
        redoc_url=None,
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        # FastAPI's native OpenTelemetry, for spans only (a span per request through the
        # provider setup_telemetry installed). Request metrics are Berth's own
        # (observability/requests.py): through the OpenTelemetry SDK they cost a blob HEAD a
        # large share of its CPU. Per-dependency spans cost more than they tell here (routers
        # are thin), and our own log lines already carry the trace id.
        telemetry={
            "tracing": settings.observability.tracing,
            "metrics": False,
            "operation_spans": False,
            "logs": False,
        },
    )
    app.state.registry = registry
    app.state.settings = settings
    app.state.draining = False
    # Plain Starlette routes, straight onto the app (see api.common.RouteTable).
    # Order matters: the catalog route must win over the ``{name:path}`` routes.
    for module in (base, listing, referrers, uploads, blobs, manifests):
        app.router.routes.extend(module.routes.routes)
    if settings.observability.metrics and settings.observability.metrics_port is None:
        # With a metrics port, /metrics is served there (cli.py), never on the public port.
        app.add_api_route("/metrics", _metrics, methods=["GET"], include_in_schema=False)
    # The registry's routes are chosen from the path's trailing words, not by trying each one.
    dispatch.install(app.router, tracing=settings.observability.tracing)
    install_auth(app, settings)  # before observability: refused requests are logged too
    if registry.proxy is not None:  # outside auth: policies see the prefixed name
        app.add_middleware(MirrorRewrite, routing=registry.proxy.routing)
    if settings.observability.access_log:
        app.add_middleware(AccessLogMiddleware)
    if settings.observability.metrics:  # outermost: every request is counted
        app.add_middleware(RequestMetricsMiddleware, metrics=process_metrics())
    return app


async def _metrics() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def app_from_environment() -> FastAPI:
    """Factory for multi-worker uvicorn: each worker rebuilds the settings the CLI resolved."""
    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    configure_logging(settings.observability.log_level, settings.observability.log_format)
    return create_app(settings, config_file=config_file_from_environment())
