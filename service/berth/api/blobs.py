"""Blob GET/HEAD (with Range, or a redirect to the object store) and DELETE."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from ..registry.digest import Digest
from ..registry.errors import RangeInvalid
from .common import RouteTable, anonymous, origin, repository

routes = RouteTable()


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """A single ``bytes=`` range as (start, end inclusive); None means "send it all".

    Unsatisfiable ranges raise RANGE_INVALID (416); forms we do not serve (several ranges,
    other units) are ignored, as RFC 9110 allows.
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    if (
        not sep
        or len(spec) > 60
        or not (first.isascii() and (first.isdigit() or first == ""))
        or not (last.isascii() and (last.isdigit() or last == ""))
    ):
        return None
    if first == "":
        if last == "" or int(last) == 0 or size == 0:  # an empty blob has no last byte
            raise RangeInvalid(headers={"Content-Range": f"bytes */{size}"})
        return max(size - int(last), 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise RangeInvalid(headers={"Content-Range": f"bytes */{size}"})
    return start, end


@routes.route("/v2/{name:path}/blobs/{digest}", ["GET", "HEAD"])
async def get_blob(request: Request) -> Response:
    reg, name = repository(request)
    d = Digest.parse(request.path_params["digest"])
    head = request.method == "HEAD"
    blob = await reg.blob(name, d, body=not head, anonymous=anonymous(request))
    size = blob.size
    headers = {
        "Docker-Content-Digest": str(d),
        "ETag": f'"{d}"',
        "Accept-Ranges": "bytes",
        "Cache-Control": "max-age=31536000",
    }
    if head:
        headers["Content-Length"] = str(size)
        return Response(status_code=200, headers=headers, media_type="application/octet-stream")
    if blob.live is not None:  # a pull-through fill in progress: its body, as it arrives
        headers["Content-Length"] = str(size)
        return StreamingResponse(blob.live, headers=headers, media_type="application/octet-stream")

    storage = reg.settings.storage
    if storage.redirect:
        url = await reg.blobs.redirect_url(d, storage.redirect_expiry_seconds)
        if url is not None:
            return Response(status_code=307, headers={"Location": url, **headers})

    status, offset, length = 200, 0, size
    range_header = request.headers.get("range")
    if range_header:
        span = parse_range(range_header, size)
        if span is not None:
            status, offset, length = 206, span[0], span[1] - span[0] + 1
            headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{size}"
    headers["Content-Length"] = str(length)
    return StreamingResponse(
        reg.blobs.open(d, offset, length),
        status_code=status,
        headers=headers,
        media_type="application/octet-stream",
    )


@routes.route("/v2/{name:path}/blobs/{digest}", ["DELETE"])
async def delete_blob(request: Request) -> Response:
    reg, name = repository(request)
    digest = request.path_params["digest"]
    reg.check_delete()
    await reg.blobs.unlink(name, Digest.parse(digest), origin(request))
    return Response(status_code=202, headers={"Content-Length": "0"})
