"""The one place requests are authorized: an ASGI middleware in front of the routers.

It resolves the route the request will take (the application's own routes, in their order),
turns it into the scope the request needs (``scopes.requirement``), asks the AuthService, and
either answers the OCI error itself (nothing reaches the routers or storage) or lets the
request through. A cross-repository mount the caller may not read from is turned into a plain
upload session by dropping ``mount``/``from`` from the query, as the spec allows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from ..registry.errors import RegistryError
from .scopes import requirement
from .service import AuthService


def flatten_routes(routes: Iterable[BaseRoute]) -> list[BaseRoute]:
    """The application's routes in matching order, looking through included routers (newer
    FastAPI keeps an included router as one entry holding ``original_router``)."""
    flat: list[BaseRoute] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            flat.extend(flatten_routes(inner.routes))
        else:
            flat.append(route)
    return flat


def match_route(routes: list[BaseRoute], scope: Scope) -> tuple[str | None, dict[str, str]]:
    """(route template, path parameters) of the route the router will pick, as the router
    picks it: the first full match, else the first partial (method) match."""
    partial: tuple[str | None, dict[str, str]] | None = None
    for route in routes:
        match, child = route.matches(scope)
        if match == Match.FULL:
            return getattr(route, "path", None), dict(child.get("path_params", {}))
        if match == Match.PARTIAL and partial is None:
            partial = (getattr(route, "path", None), dict(child.get("path_params", {})))
    return partial or (None, {})


class AuthMiddleware:
    def __init__(self, app: ASGIApp, auth: AuthService) -> None:
        self.app = app
        self.auth = auth
        self._routes: list[BaseRoute] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v2"):
            await self.app(scope, receive, send)
            return
        if self._routes is None:  # routes are complete once the first request arrives
            self._routes = flatten_routes(scope["app"].router.routes)
        template, params = match_route(self._routes, scope)
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        req = requirement(template, scope["method"], params, query)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            decision = await self.auth.authorize(
                headers.get("authorization"), req, scope.get("scheme", "http"), headers.get("host")
            )
        except RegistryError as exc:
            await _send_error(scope, send, exc)
            return
        if req.mount and not decision.mount_allowed:
            kept = [
                (k, v)
                for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"))
                if k not in ("mount", "from")
            ]
            scope = {**scope, "query_string": urlencode(kept).encode("latin-1")}
        state = scope.setdefault("state", {})
        state["identity"] = decision.identity
        await self.app(scope, receive, send)


async def _send_error(scope: Scope, send: Send, exc: RegistryError) -> None:
    body = b""
    if scope["method"] != "HEAD":
        envelope = {"errors": [{"code": exc.code, "message": exc.message, "detail": exc.detail}]}
        body = json.dumps(envelope).encode()
    headers = [(b"content-type", b"application/json")]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    headers.append((b"content-length", str(len(body)).encode()))
    headers.append((b"docker-distribution-api-version", b"registry/2.0"))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


__all__ = ["AuthMiddleware"]
