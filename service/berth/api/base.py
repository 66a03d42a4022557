"""``GET /v2/`` (API version check) and the health endpoints.

* ``/healthz``: the process is alive.
* ``/readyz``: the process serves and is not draining (503 once shutdown has begun). It does not
  depend on storage: an object-store outage must not empty the Service of every replica.
* ``/healthz/storage``: storage answers (a bounded ``ping``); also sets the ``berth_storage_up``
  gauge. The operator probes it through the Service for the Registry's ``StorageAvailable``
  condition.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ..observability.health import check_storage
from .common import RouteTable, error_body, registry

routes = RouteTable()
_VERSION_HEADERS = {"Docker-Distribution-API-Version": "registry/2.0"}


@routes.route("/v2/", ["GET", "HEAD"])
async def version_check(request: Request) -> Response:
    return JSONResponse({}, headers=_VERSION_HEADERS)


@routes.route("/healthz", ["GET"])
async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


@routes.route("/readyz", ["GET"])
async def readyz(request: Request) -> Response:
    if getattr(request.app.state, "draining", False):
        body = error_body("UNAVAILABLE", "the server is shutting down", None)
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ready"})


@routes.route("/healthz/storage", ["GET"])
async def storage_health(request: Request) -> Response:
    settings = request.app.state.settings.observability
    error = await check_storage(registry(request).driver, settings.storage_check_timeout_seconds)
    if error is not None:
        body = error_body("UNAVAILABLE", "storage is not reachable", error)
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ok"})
