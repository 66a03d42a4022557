"""The ASGI application: routers, error handlers, telemetry and the registry, wired once."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import Response

from .api import base, blobs, listing, manifests, referrers, uploads
from .api.common import EXCEPTION_HANDLERS
from .auth import install as install_auth
from .config import Settings
from .gc.background import Maintenance, config_file_from_environment
from .observability.logging import configure_logging
from .observability.middleware import AccessLogMiddleware
from .observability.telemetry import setup_telemetry
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
    registry = Registry(driver, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await registry.driver.start()
        maintenance = Maintenance(registry.driver, settings, config_file)
        await maintenance.start()
        try:
            yield
        finally:
            await maintenance.stop()
            await registry.close()

    app = FastAPI(
        title="Berth",
        description="OCI Distribution API v1.1",
        lifespan=lifespan,
        openapi_url=None,  # the API is the OCI spec; no generated schema on a public port
        docs_url=None,
        redoc_url=None,
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        # FastAPI's native OpenTelemetry: a span and duration metrics per request, through the
        # providers setup_telemetry installed. Its per-dependency spans cost more than they tell
        # here (routers are thin), and our own log lines already carry the trace id.
        telemetry={
            "tracing": settings.observability.tracing,
            "metrics": settings.observability.metrics,
            "operation_spans": False,
            "logs": False,
        },
    )
    app.state.registry = registry
    app.state.settings = settings
    # Plain Starlette routes, straight onto the app (see api.common.RouteTable).
    # Order matters: the catalog route must win over the ``{name:path}`` routes.
    for module in (base, listing, referrers, uploads, blobs, manifests):
        app.router.routes.extend(module.routes.routes)
    if settings.observability.metrics:
        app.add_api_route("/metrics", _metrics, methods=["GET"], include_in_schema=False)
    install_auth(app, settings)  # before observability: refused requests are logged too
    if settings.observability.access_log:
        app.add_middleware(AccessLogMiddleware)
    return app


async def _metrics() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


SETTINGS_ENV = "BERTH_INTERNAL_SETTINGS_JSON"


def app_from_environment() -> FastAPI:
    """Factory for multi-worker uvicorn: each worker rebuilds the settings the CLI resolved."""
    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    configure_logging(settings.observability.log_level, settings.observability.log_format)
    return create_app(settings, config_file=config_file_from_environment())
