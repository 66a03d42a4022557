"""The referrers API: manifests whose ``subject`` is a given digest, as an OCI image index."""

from __future__ import annotations

import json

from fastapi import Request
from fastapi.responses import Response

from ..registry import mediatypes as mt
from ..registry.digest import Digest
from .common import RouteTable, anonymous, repository

routes = RouteTable()


@routes.route("/v2/{name:path}/referrers/{digest}", ["GET"])
async def list_referrers(request: Request) -> Response:
    reg, name = repository(request)
    digest = request.path_params["digest"]
    subject = Digest.parse(digest)
    artifact_type = request.query_params.get("artifactType")
    descriptors = await reg.referrers_of(name, subject, artifact_type, anonymous=anonymous(request))
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type is not None else {}
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": descriptors}
    # ensure_ascii: manifest strings may hold lone surrogates (valid JSON escapes, not UTF-8).
    return Response(json.dumps(index).encode(), headers=headers, media_type=mt.OCI_INDEX)
