"""``GET /v2/`` (API version check) and the health endpoints."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .common import error_body, registry

router = APIRouter()
_VERSION_HEADERS = {"Docker-Distribution-API-Version": "registry/2.0"}


@router.api_route("/v2/", methods=["GET", "HEAD"])
async def version_check() -> Response:
    return JSONResponse({}, headers=_VERSION_HEADERS)


@router.get("/healthz")
async def healthz() -> Response:
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    try:
        await registry(request).driver.ping()
    except Exception as exc:  # any failure means "not ready"; the reason goes to the body
        body = error_body("UNAVAILABLE", "storage is not reachable", type(exc).__name__)
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ready"})
