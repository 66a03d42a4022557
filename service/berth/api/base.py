"""``GET /v2/`` (API version check) and the health endpoints."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse, Response

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
    try:
        await registry(request).driver.ping()
    except Exception as exc:  # any failure means "not ready"; the reason goes to the body
        body = error_body("UNAVAILABLE", "storage is not reachable", type(exc).__name__)
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ready"})
