"""Route selection in one step: the router's choice without trying every route's pattern.

Starlette's router tries the routes in order until one matches; a blob HEAD, behind the base,
listing, referrer and upload routes, went through about thirteen regular expressions. Every
registry route is ``/v2/{name:path}/<fixed words and single-segment parameters>``, so the last
segments of a path say which routes can match: the ``Dispatcher`` indexes the routes by those
trailing words (and parameterless routes by their path), tries only the candidates, in the
router's order and with the routes' own patterns, and so picks exactly the route the router
would: the first full match, else the first that matches all but the method (405). Anything it
does not index (FastAPI routes, mounts, other converters, a ``root_path``) and every request no
candidate matches (404, slash redirects) go to the router itself.

It also names the chosen route for the request metrics (a ``RouteSlot`` in the scope) and, with
tracing on, for the request's span, as FastAPI's router does for its own telemetry.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Any

from opentelemetry import trace
from starlette.routing import BaseRoute, Match, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from ..observability.requests import ROUTE_SLOT, RouteSlot, known_methods

# One trailing shape: for each of the last n segments, True where the template has a literal.
Shape = tuple[bool, ...]


def _template_segments(route: Route) -> list[str] | None:
    """The template's segments when the route can be indexed, else None."""
    if type(route) is not Route:  # FastAPI's APIRoute and others: left to the router
        return None
    converters = route.param_convertors
    kinds = {type(c).__name__ for c in converters.values()}
    if not kinds <= {"StringConvertor", "PathConvertor"}:
        return None
    return route.path.split("/")


def _is_param(segment: str) -> bool:
    return segment.startswith("{") and segment.endswith("}")


class Dispatcher:
    def __init__(self, router: Router, fallback: ASGIApp, *, tracing: bool = False) -> None:
        self.router = router
        self.fallback = fallback
        self.tracing = tracing
        self.methods = known_methods()
        self._routes: list[BaseRoute] | None = None
        self._source: list[BaseRoute] | None = None
        # (fewest segments a path needs, its key, the table by key) for each trailing shape
        self._tables: list[tuple[int, Callable[[list[str]], Any], dict[Any, list[int]]]] = []
        self._exact: dict[str, list[int]] = {}
        self._trailing: dict[Shape, dict[tuple[str, ...], list[int]]] = {}
        self._always: list[int] = []

    def _index(self, routes: list[BaseRoute]) -> None:
        self._source, self._routes = routes, list(routes)
        self._exact, self._trailing, self._always = {}, {}, []
        for i, route in enumerate(self._routes):
            segments = _template_segments(route) if isinstance(route, Route) else None
            if segments is None or not isinstance(route, Route):
                self._always.append(i)
                continue
            params = [j for j, s in enumerate(segments) if _is_param(s)]
            if not params:
                self._exact.setdefault(route.path, []).append(i)
                continue
            path_params = [j for j in params if segments[j].endswith(":path}")]
            ok = (
                len(path_params) == 1
                and all(s.count("{") == (1 if _is_param(s) else 0) for s in segments)
                and "}" not in "".join(s for s in segments if not _is_param(s))
                and not any(_is_param(s) for s in segments[: path_params[0]])
            )
            if not ok:
                self._always.append(i)
                continue
            tail = segments[path_params[0] + 1 :]
            if all(_is_param(s) for s in tail):  # nothing to key on (or no tail at all)
                self._always.append(i)
                continue
            shape = tuple(not _is_param(s) for s in tail)
            self._trailing.setdefault(shape, {}).setdefault(tuple(tail), []).append(i)
        self._tables = []
        for shape, by_tail in self._trailing.items():
            n = len(shape)
            # The literal segments, counted from the end: the key a path must have.
            key_of = itemgetter(*(j - n for j, literal in enumerate(shape) if literal))
            table: dict[Any, list[int]] = {}
            for trailing, indices in by_tail.items():
                table.setdefault(key_of(list(trailing)), []).extend(indices)
            for indices in table.values():
                indices.sort()
            # "", a prefix and the path parameter come before the trailing segments.
            self._tables.append((n + 2, key_of, table))

    def _candidates(self, path: str) -> list[int]:
        found: list[list[int]] = []
        exact = self._exact.get(path)
        if exact:
            found.append(exact)
        segments = path.split("/")
        count = len(segments)
        for least, key_of, table in self._tables:
            if count >= least:
                hit = table.get(key_of(segments))
                if hit:
                    found.append(hit)
        if self._always:
            found.append(self._always)
        if len(found) == 1:
            return found[0]
        return sorted({i for group in found for i in group})

    def select(self, scope: Scope) -> tuple[BaseRoute | None, Scope | None]:
        """The route the router would pick and its child scope; (None, None) when none
        matches."""
        routes = self.router.routes
        if (
            self._routes is None
            or len(routes) != len(self._routes)
            or any(a is not b for a, b in zip(routes, self._routes, strict=True))
        ):
            self._index(routes)
        assert self._routes is not None
        partial: tuple[BaseRoute, Scope] | None = None
        for i in self._candidates(scope["path"]):
            route = self._routes[i]
            match, child = route.matches(scope)
            if match is Match.FULL:
                return route, child
            if match is Match.PARTIAL and partial is None:
                partial = (route, child)
        return partial or (None, None)

    def _name(self, scope: Scope, route: BaseRoute) -> None:
        template = getattr(route, "path_format", None)
        if template is None:
            return
        slot = scope.get(ROUTE_SLOT)
        if isinstance(slot, RouteSlot):
            slot.route = template
        if self.tracing:
            span = trace.get_current_span()
            if span.is_recording():
                method = scope["method"] if scope["method"] in self.methods else "HTTP"
                span.set_attribute("http.route", template)
                span.update_name(f"{method} {template}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("root_path"):
            await self.fallback(scope, receive, send)
            return
        route, child = self.select(scope)
        if route is None or child is None or type(route) is not Route:
            self._name_fallback(scope, route)
            await self.fallback(scope, receive, send)
            return
        self._name(scope, route)
        scope.update(child)
        if "router" not in scope:
            scope["router"] = self.router
        await route.handle(scope, receive, send)

    def _name_fallback(self, scope: Scope, route: BaseRoute | None) -> None:
        """The metrics' route for what the router handles: the matched route, or the route a
        slash redirect leads to (as FastAPI names it); the router names spans itself."""
        slot = scope.get(ROUTE_SLOT)
        if not isinstance(slot, RouteSlot):
            return
        if route is None:
            path = scope["path"]
            if path == "/" or not getattr(self.router, "redirect_slashes", False):
                return
            other: dict[str, Any] = dict(scope)
            other["path"] = path.rstrip("/") if path.endswith("/") else path + "/"
            route, _ = self.select(other)
        template = getattr(route, "path_format", None) if route is not None else None
        if template is not None:
            slot.route = template


def install(router: Router, *, tracing: bool) -> Dispatcher:
    """Put a dispatcher in front of the router's own route selection."""
    dispatcher = Dispatcher(router, router.middleware_stack, tracing=tracing)
    router.middleware_stack = dispatcher
    return dispatcher


__all__ = ["Dispatcher", "install"]
