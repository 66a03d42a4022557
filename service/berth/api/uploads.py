"""Blob uploads: sessions, monolithic and chunked uploads, cross-repository mounts."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from ..registry.digest import Digest
from ..registry.errors import DigestInvalid, RangeInvalid
from ..registry.registry import Registry
from ..registry.uploads import UploadStatus, parse_content_range, validate_upload_id
from .common import (
    RouteTable,
    content_length,
    has_body,
    location,
    origin,
    registry,
    repository,
)

routes = RouteTable()


def _session_response(request: Request, name: str, status: UploadStatus, code: int) -> Response:
    return Response(
        status_code=code,
        headers={
            "Location": location(request, f"/v2/{name}/blobs/uploads/{status.upload_id}"),
            "Range": f"0-{max(status.offset - 1, 0)}",
            "Docker-Upload-UUID": status.upload_id,
            "Content-Length": "0",
        },
    )


def _created(request: Request, name: str, digest: Digest) -> Response:
    return Response(
        status_code=201,
        headers={
            "Location": location(request, f"/v2/{name}/blobs/{digest}"),
            "Docker-Content-Digest": str(digest),
            "Content-Length": "0",
        },
    )


async def _content_range(request: Request, name: str, upload_id: str) -> tuple[int, int] | None:
    """The chunk's Content-Range; a malformed one is 416 with the session's current Range."""
    header = request.headers.get("content-range")
    if not header:
        return None
    try:
        return parse_content_range(header)
    except RangeInvalid as exc:
        status = await registry(request).uploads.status(name, upload_id)
        exc.headers = {**exc.headers, "Range": f"0-{max(status.offset - 1, 0)}"}
        raise


def _session(request: Request, *, write: bool = False) -> tuple[Registry, str, str]:
    reg, name = repository(request, write=write)
    return reg, name, validate_upload_id(request.path_params["upload_id"])


def _digest_param(request: Request) -> Digest:
    value = request.query_params.get("digest")
    if not value:
        raise DigestInvalid("the digest query parameter is required")
    return Digest.parse(value)


@routes.route("/v2/{name:path}/blobs/uploads/", ["POST"])
async def start_upload(request: Request) -> Response:
    reg, name = repository(request, write=True)
    params = request.query_params
    if "mount" in params:
        digest = Digest.parse(params["mount"])
        if await reg.mount(name, digest, params.get("from"), origin(request)):
            return _created(request, name, digest)
    elif "digest" in params:
        digest = _digest_param(request)
        await reg.uploads.monolithic(
            name, digest, request.stream(), content_length(request), origin(request)
        )
        return _created(request, name, digest)
    status = await reg.uploads.start(name)
    return _session_response(request, name, status, 202)


@routes.route("/v2/{name:path}/blobs/uploads/{upload_id}", ["GET"])
async def upload_status(request: Request) -> Response:
    reg, name, upload_id = _session(request)
    status = await reg.uploads.status(name, upload_id)
    return _session_response(request, name, status, 204)


@routes.route("/v2/{name:path}/blobs/uploads/{upload_id}", ["PATCH"])
async def upload_chunk(request: Request) -> Response:
    reg, name, upload_id = _session(request, write=True)
    status = await reg.uploads.append(
        name,
        upload_id,
        request.stream(),
        await _content_range(request, name, upload_id),
        content_length(request),
    )
    return _session_response(request, name, status, 202)


@routes.route("/v2/{name:path}/blobs/uploads/{upload_id}", ["PUT"])
async def finish_upload(request: Request) -> Response:
    reg, name, upload_id = _session(request, write=True)
    digest = _digest_param(request)
    await reg.uploads.complete(
        name,
        upload_id,
        digest,
        request.stream() if has_body(request) else None,
        await _content_range(request, name, upload_id),
        content_length(request),
        origin(request),
    )
    return _created(request, name, digest)


@routes.route("/v2/{name:path}/blobs/uploads/{upload_id}", ["DELETE"])
async def cancel_upload(request: Request) -> Response:
    reg, name, upload_id = _session(request, write=True)
    await reg.uploads.cancel(name, upload_id)
    return Response(status_code=204)
