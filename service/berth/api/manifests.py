"""Manifests by tag or digest: GET/HEAD with Accept negotiation, PUT, DELETE."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from ..registry import mediatypes as mt
from ..registry.errors import ManifestTooLarge, ManifestUnknown
from ..registry.names import is_digest_reference
from .common import RouteTable, anonymous, content_length, location, origin, repository

routes = RouteTable()


def _accepted(accept_headers: list[str]) -> set[str]:
    types = set()
    for header in accept_headers:
        for item in header.split(","):
            types.add(item.split(";", 1)[0].strip().lower())
    return types


def _check_accept(request: Request, media_type: str, reference: str) -> None:
    """Refuse a tag whose manifest type the client said it cannot handle.

    Only when the client names manifest types at all (curl sends ``*/*`` or nothing), and
    only for tags: a digest names exact content, so it is always returned as it is.
    """
    accepted = _accepted(request.headers.getlist("accept"))
    if is_digest_reference(reference) or not (accepted & mt.MANIFESTS):
        return
    if media_type not in accepted and "*/*" not in accepted:
        raise ManifestUnknown(
            f"manifest is {media_type}, which the Accept header does not allow",
            detail={"mediaType": media_type},
        )


@routes.route("/v2/{name:path}/manifests/{reference}", ["GET", "HEAD"])
async def get_manifest(request: Request) -> Response:
    reg, name = repository(request)
    reference = request.path_params["reference"]
    stored = await reg.manifest(name, reference, anonymous=anonymous(request))
    _check_accept(request, stored.media_type, reference)
    # Pulls are off by default: the request is described only when some endpoint wants them.
    if request.method == "GET" and reg.events is not None and reg.events.wants("pull"):
        await reg.manifests.pulled(name, reference, stored, origin(request))
    headers = {
        "Docker-Content-Digest": str(stored.digest),
        "ETag": f'"{stored.digest}"',
        "Content-Length": str(len(stored.body)),
    }
    body = b"" if request.method == "HEAD" else stored.body
    return Response(body, headers=headers, media_type=stored.media_type)


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = content_length(request)
    if declared is not None and declared > limit:
        raise ManifestTooLarge(f"manifest is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ManifestTooLarge(f"manifest exceeds the limit of {limit} bytes")
    return bytes(body)


@routes.route("/v2/{name:path}/manifests/{reference}", ["PUT"])
async def put_manifest(request: Request) -> Response:
    reg, name = repository(request, write=True)
    reference = request.path_params["reference"]
    body = await _read_limited(request, reg.settings.limits.max_manifest_bytes)
    stored, tagged = await reg.manifests.put(
        name,
        reference,
        body,
        request.headers.get("content-type"),
        tags=request.query_params.getlist("tag"),
        origin=origin(request),
    )
    headers = {
        "Location": location(request, f"/v2/{name}/manifests/{stored.digest}"),
        "Docker-Content-Digest": str(stored.digest),
        "Content-Length": "0",
    }
    if tagged:
        # One field with a list is the same as one field per tag (RFC 9110, section 5.3).
        headers["OCI-Tag"] = ", ".join(tagged)
    if stored.manifest.subject is not None:
        headers["OCI-Subject"] = str(stored.manifest.subject.digest)
    return Response(status_code=201, headers=headers)


@routes.route("/v2/{name:path}/manifests/{reference}", ["DELETE"])
async def delete_manifest(request: Request) -> Response:
    reg, name = repository(request)
    reference = request.path_params["reference"]
    reg.check_delete()
    await reg.manifests.delete(name, reference, origin(request))
    return Response(status_code=202, headers={"Content-Length": "0"})
