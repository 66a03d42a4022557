"""Shared HTTP helpers: the registry from app state, the OCI error envelope, header parsing."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from ..events.model import Origin
from ..registry.errors import RegistryError, SizeInvalid
from ..registry.registry import Registry
from ..storage.driver import StorageError, StorageUnavailable

log = logging.getLogger("berth.api")


def registry(request: Request) -> Registry:
    reg: Registry = request.app.state.registry
    return reg


def repository(request: Request, *, write: bool = False) -> tuple[Registry, str]:
    """The registry and the request's validated repository name; with ``write``, refused when
    the registry is read-only."""
    reg = registry(request)
    name = reg.name(request.path_params["name"])
    if write:
        reg.check_push(name)
    return reg, name


def origin(request: Request) -> Origin | None:
    """The request, as an event describes it; None (nothing built) when events are off."""
    reg = registry(request)
    if reg.events is None:
        return None
    headers = request.headers
    host = headers.get("host", "")[:256]
    identity = getattr(request.state, "identity", None)
    client = request.client
    base = reg.settings.http.base_url or f"{request.url.scheme}://{host}"
    return Origin(
        actor=(identity.user or "") if identity is not None else "",
        request_id=headers.get("x-request-id", "")[:128] or str(uuid.uuid4()),
        addr=f"{client.host}:{client.port}" if client else "",
        host=host,
        method=request.method,
        useragent=headers.get("user-agent", "")[:512],
        base_url=base.rstrip("/"),
    )


def anonymous(request: Request) -> bool:
    """Whether the caller is not logged in (the auth middleware's decision; none: anonymous)."""
    identity = request.scope.get("state", {}).get("identity")
    return identity is None or bool(identity.anonymous)


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message, "detail": detail}]}


async def registry_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RegistryError)
    if request.method == "HEAD":
        return Response(status_code=exc.status, headers=exc.headers)
    return JSONResponse(
        error_body(exc.code, exc.message, exc.detail), status_code=exc.status, headers=exc.headers
    )


async def unavailable_handler(request: Request, exc: Exception) -> Response:
    headers = {"Retry-After": "5"}
    if request.method == "HEAD":
        return Response(status_code=503, headers=headers)
    body = error_body("UNAVAILABLE", "storage is unavailable, retry later", str(exc)[:200])
    return JSONResponse(body, status_code=503, headers=headers)


async def storage_error_handler(request: Request, exc: Exception) -> Response:
    """A store failure retrying cannot fix (credentials, a bucket policy): the operator's
    problem, logged with its cause; the client gets the envelope, never a traceback."""
    log.error("storage error on %s %s: %s", request.method, request.url.path, exc)
    if request.method == "HEAD":
        return Response(status_code=500)
    body = error_body("UNKNOWN", "the storage backend refused the request", type(exc).__name__)
    return JSONResponse(body, status_code=500)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = "UNSUPPORTED" if exc.status_code == 405 else "NOT_FOUND"
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


EXCEPTION_HANDLERS = {
    RegistryError: registry_error_handler,
    StorageUnavailable: unavailable_handler,
    StorageError: storage_error_handler,
    StarletteHTTPException: http_error_handler,
}


def content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 19:
        raise SizeInvalid(f"invalid Content-Length: {value[:40]!r}")
    return int(value)


def has_body(request: Request) -> bool:
    length = content_length(request)
    if length is not None:
        return length > 0
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


def location(request: Request, path: str) -> str:
    """Relative by default (clients resolve it against the request URL), absolute with base_url."""
    base = registry(request).settings.http.base_url
    return f"{base.rstrip('/')}{path}" if base else path


class RouteTable:
    """Collects plain Starlette routes: handlers take the Request and read ``path_params``.

    The handlers need nothing from FastAPI's dependency injection (they parse the request
    themselves), and skipping it saves a large share of the per-request CPU on hot paths.
    """

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def route(
        self, path: str, methods: list[str]
    ) -> Callable[
        [Callable[[Request], Awaitable[Response]]], Callable[[Request], Awaitable[Response]]
    ]:
        def register(
            handler: Callable[[Request], Awaitable[Response]],
        ) -> Callable[[Request], Awaitable[Response]]:
            self.routes.append(Route(path, handler, methods=methods))
            return handler

        return register
