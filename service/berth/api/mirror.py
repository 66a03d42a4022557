"""Pull-through routes onto prefixed names: a containerd mirror request (``?ns=docker.io``) and
Docker Hub's implicit ``library/`` get their path rewritten to the prefixed repository name
before authorization and routing, so both see one name (the rules are in proxy/routing.py)."""

from __future__ import annotations

from urllib.parse import parse_qs

from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..proxy.routing import Routing
from ..registry.errors import RegistryError
from .common import error_body


class MirrorRewrite:
    def __init__(self, app: ASGIApp, routing: Routing) -> None:
        self.app = app
        self.routing = routing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v2/"):
            await self.app(scope, receive, send)
            return
        query: bytes = scope.get("query_string", b"")
        namespace = None
        if b"ns=" in query:
            values = parse_qs(query.decode("latin-1")).get("ns")
            namespace = values[0] if values else None
        try:
            path = self.routing.rewrite(scope["path"], namespace)
        except RegistryError as exc:
            response: Response
            if scope["method"] == "HEAD":
                response = Response(status_code=exc.status, headers=exc.headers)
            else:
                body = error_body(exc.code, exc.message, exc.detail)
                response = JSONResponse(body, status_code=exc.status, headers=exc.headers)
            await response(scope, receive, send)
            return
        if path is not None:
            scope = {**scope, "path": path, "raw_path": path.encode()}
        await self.app(scope, receive, send)


__all__ = ["MirrorRewrite"]
