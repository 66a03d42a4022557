"""Paginated listings: tags of a repository and the catalog of repositories."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ..registry.catalog import paginate
from ..registry.errors import PaginationInvalid
from .common import RouteTable, anonymous, registry, repository

routes = RouteTable()


def _page_params(request: Request) -> tuple[int | None, str | None]:
    n_value = request.query_params.get("n")
    n = None
    if n_value is not None:
        if not (n_value.isascii() and n_value.isdigit()) or len(n_value) > 9:
            raise PaginationInvalid(f"n must be a non-negative integer, not {n_value[:20]!r}")
        n = min(int(n_value), registry(request).settings.limits.max_page_size)
    return n, request.query_params.get("last")


def _page(
    request: Request, path: str, items: list[str], key: str, extra: dict[str, str]
) -> Response:
    n, last = _page_params(request)
    page, more = paginate(items, n, last)
    headers = {}
    if more and page:
        query = urlencode({"n": n, "last": page[-1]})
        headers["Link"] = f'<{path}?{query}>; rel="next"'
    return JSONResponse({**extra, key: page}, headers=headers)


@routes.route("/v2/{name:path}/tags/list", ["GET", "HEAD"])
async def list_tags(request: Request) -> Response:
    reg, name = repository(request)
    tags = await reg.tag_list(name, anonymous=anonymous(request))
    return _page(request, f"/v2/{name}/tags/list", tags, "tags", {"name": name})


@routes.route("/v2/_catalog", ["GET"])
async def catalog(request: Request) -> Response:
    reg = registry(request)
    return _page(request, "/v2/_catalog", await reg.catalog(), "repositories", {})
