"""Manifests, tags, catalog and referrers through the ASGI app."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import pytest

from berth.storage.driver import PathNotFound, StorageDriver

from .conftest import error_code, push_blob, push_image, sha256

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
EMPTY = "application/vnd.oci.empty.v1+json"


async def put_json(
    client: httpx.AsyncClient, name: str, ref: str, body: dict[str, Any], media_type: str | None
) -> httpx.Response:
    headers = {"Content-Type": media_type} if media_type else {}
    return await client.put(
        f"/v2/{name}/manifests/{ref}", content=json.dumps(body).encode(), headers=headers
    )


async def test_put_and_get_by_tag_and_digest(client: httpx.AsyncClient) -> None:
    digest, body = await push_image(client, "lib/app", "v1")
    for ref in ("v1", digest):
        r = await client.get(f"/v2/lib/app/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 200
        assert r.content == body
        assert r.headers["Content-Type"] == OCI_MANIFEST
        assert r.headers["Docker-Content-Digest"] == digest
        head = await client.head(f"/v2/lib/app/manifests/{ref}")
        assert head.status_code == 200
        assert head.headers["Content-Length"] == str(len(body))
        assert head.content == b""


async def test_put_returns_location(client: httpx.AsyncClient) -> None:
    digest, _ = await push_image(client, "app", None)
    r = await client.get(f"/v2/app/manifests/{digest}")
    assert r.status_code == 200
    r = await client.get("/v2/app/tags/list")
    assert r.json() == {"name": "app", "tags": []}


async def test_docker_schema2_manifest(client: httpx.AsyncClient) -> None:
    _, body = await push_image(client, "app", "docker", media_type=DOCKER_MANIFEST)
    r = await client.get("/v2/app/manifests/docker", headers={"Accept": DOCKER_MANIFEST})
    assert r.headers["Content-Type"] == DOCKER_MANIFEST
    assert r.content == body


async def test_accept_negotiation_refuses_unacceptable_type_by_tag(
    client: httpx.AsyncClient,
) -> None:
    digest, _ = await push_image(client, "app", "oci")
    r = await client.get("/v2/app/manifests/oci", headers={"Accept": DOCKER_MANIFEST})
    assert r.status_code == 404
    assert error_code(r) == "MANIFEST_UNKNOWN"
    # By digest the exact content is always returned; */* and no Accept accept anything.
    r = await client.get(f"/v2/app/manifests/{digest}", headers={"Accept": DOCKER_MANIFEST})
    assert r.status_code == 200
    r = await client.get("/v2/app/manifests/oci", headers={"Accept": f"{DOCKER_MANIFEST}, */*"})
    assert r.status_code == 200
    r = await client.get("/v2/app/manifests/oci")
    assert r.status_code == 200


@pytest.mark.parametrize("index_type", [OCI_INDEX, DOCKER_LIST])
async def test_index_of_two_platforms(client: httpx.AsyncClient, index_type: str) -> None:
    child_type = OCI_MANIFEST if index_type == OCI_INDEX else DOCKER_MANIFEST
    amd, amd_body = await push_image(client, "multi", None, seed=b"amd", media_type=child_type)
    arm, arm_body = await push_image(client, "multi", None, seed=b"arm", media_type=child_type)
    index = {
        "schemaVersion": 2,
        "mediaType": index_type,
        "manifests": [
            {
                "mediaType": child_type,
                "digest": d,
                "size": len(b),
                "platform": {"architecture": arch, "os": "linux"},
            }
            for d, b, arch in ((amd, amd_body, "amd64"), (arm, arm_body, "arm64"))
        ],
    }
    r = await put_json(client, "multi", "latest", index, index_type)
    assert r.status_code == 201, r.text
    r = await client.get("/v2/multi/manifests/latest", headers={"Accept": index_type})
    assert r.headers["Content-Type"] == index_type
    assert json.loads(r.content)["manifests"][1]["digest"] == arm


async def test_index_with_unknown_child_is_rejected(client: httpx.AsyncClient) -> None:
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha256(b"nope"), "size": 10}],
    }
    r = await put_json(client, "multi", "latest", index, OCI_INDEX)
    assert r.status_code == 400
    assert error_code(r) == "MANIFEST_BLOB_UNKNOWN"


async def test_manifest_with_missing_blob_is_rejected(
    client: httpx.AsyncClient, storage: StorageDriver
) -> None:
    config = await push_blob(client, "app", b"{}")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config,
            "size": 2,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": sha256(b"missing"),
                "size": 7,
            }
        ],
    }
    r = await put_json(client, "app", "latest", manifest, OCI_MANIFEST)
    assert r.status_code == 400
    assert error_code(r) == "MANIFEST_BLOB_UNKNOWN"
    with pytest.raises(PathNotFound):  # nothing at all was written under _manifests
        await storage.list("docker/registry/v2/repositories/app/_manifests")


async def test_manifest_with_wrong_blob_size_is_invalid(client: httpx.AsyncClient) -> None:
    config = await push_blob(client, "app", b"{}")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config,
            "size": 99,
        },
        "layers": [],
    }
    r = await put_json(client, "app", "latest", manifest, OCI_MANIFEST)
    assert r.status_code == 400
    assert error_code(r) == "MANIFEST_INVALID"


async def test_put_by_digest_verifies_digest(client: httpx.AsyncClient) -> None:
    _, body = await push_image(client, "app", None)
    wrong = sha256(b"other")
    r = await client.put(
        f"/v2/app/manifests/{wrong}", content=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert r.status_code == 400
    assert error_code(r) == "DIGEST_INVALID"
    right = sha256(body)
    r = await client.put(
        f"/v2/app/manifests/{right}", content=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert r.status_code == 201


async def test_put_by_sha512_digest(client: httpx.AsyncClient) -> None:
    _, body = await push_image(client, "app", None)
    digest = "sha512:" + hashlib.sha512(body).hexdigest()
    r = await client.put(
        f"/v2/app/manifests/{digest}", content=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert r.status_code == 201
    assert r.headers["Docker-Content-Digest"] == digest
    assert (await client.get(f"/v2/app/manifests/{digest}")).content == body


async def test_manifest_over_limit_is_413(client: httpx.AsyncClient) -> None:
    body = b'{"schemaVersion": 2, "pad": "' + b"x" * (4 * 1024 * 1024) + b'"}'
    r = await client.put(
        "/v2/app/manifests/big", content=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert r.status_code == 413
    assert error_code(r) == "MANIFEST_INVALID"


async def test_artifact_with_subject_and_referrers(client: httpx.AsyncClient) -> None:
    subject, subject_body = await push_image(client, "app", "v1")
    empty = await push_blob(client, "app", b"{}")
    sig = await push_blob(client, "app", b"signature bytes")
    artifact = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": {"mediaType": EMPTY, "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": sig, "size": 15}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": len(subject_body)},
        "annotations": {"org.example.kind": "signature"},
    }
    r = await put_json(client, "app", sha256(json.dumps(artifact).encode()), artifact, OCI_MANIFEST)
    assert r.status_code == 201, r.text
    assert r.headers["OCI-Subject"] == subject
    sbom = dict(artifact, artifactType="application/spdx+json")
    r = await put_json(client, "app", sha256(json.dumps(sbom).encode()), sbom, OCI_MANIFEST)
    assert r.status_code == 201

    r = await client.get(f"/v2/app/referrers/{subject}")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == OCI_INDEX
    index = r.json()
    assert index["schemaVersion"] == 2 and index["mediaType"] == OCI_INDEX
    kinds = sorted(m["artifactType"] for m in index["manifests"])
    assert kinds == ["application/spdx+json", "application/vnd.example.signature"]
    assert all(m["annotations"] == {"org.example.kind": "signature"} for m in index["manifests"])
    assert "OCI-Filters-Applied" not in r.headers

    r = await client.get(
        f"/v2/app/referrers/{subject}", params={"artifactType": "application/spdx+json"}
    )
    assert r.headers["OCI-Filters-Applied"] == "artifactType"
    assert [m["artifactType"] for m in r.json()["manifests"]] == ["application/spdx+json"]

    # Deleting a referrer removes it from the list.
    sbom_digest = sha256(json.dumps(sbom).encode())
    assert (await client.delete(f"/v2/app/manifests/{sbom_digest}")).status_code == 202
    r = await client.get(f"/v2/app/referrers/{subject}")
    assert [m["digest"] for m in r.json()["manifests"]] == [sha256(json.dumps(artifact).encode())]


async def test_referrers_of_unknown_digest_is_empty_index(client: httpx.AsyncClient) -> None:
    r = await client.get(f"/v2/app/referrers/{sha256(b'unknown')}")
    assert r.status_code == 200
    assert r.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


async def test_referrer_falls_back_to_config_media_type(client: httpx.AsyncClient) -> None:
    subject, body = await push_image(client, "app", "v1")
    config = await push_blob(client, "app", b'{"kind":"sbom"}')
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.example.sbom.config",
            "digest": config,
            "size": 15,
        },
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": len(body)},
    }
    r = await put_json(client, "app", "sbom", manifest, OCI_MANIFEST)
    assert r.status_code == 201
    r = await client.get(f"/v2/app/referrers/{subject}")
    assert r.json()["manifests"][0]["artifactType"] == "application/vnd.example.sbom.config"


async def test_manifest_without_media_type_as_helm_writes_it(client: httpx.AsyncClient) -> None:
    config = await push_blob(client, "charts/demo", b'{"name":"demo"}')
    chart = await push_blob(client, "charts/demo", b"chart tarball")
    manifest = {
        "schemaVersion": 2,
        "config": {
            "mediaType": "application/vnd.cncf.helm.config.v1+json",
            "digest": config,
            "size": 15,
        },
        "layers": [
            {
                "mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
                "digest": chart,
                "size": 13,
            }
        ],
    }
    r = await put_json(client, "charts/demo", "0.1.0", manifest, OCI_MANIFEST)
    assert r.status_code == 201, r.text
    r = await client.get("/v2/charts/demo/manifests/0.1.0", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == OCI_MANIFEST
    assert "mediaType" not in r.json()


async def test_media_type_must_match_content_type(client: httpx.AsyncClient) -> None:
    _, body = await push_image(client, "app", None)
    r = await client.put(
        "/v2/app/manifests/x", content=body, headers={"Content-Type": DOCKER_MANIFEST}
    )
    assert r.status_code == 400
    assert error_code(r) == "MANIFEST_INVALID"


async def test_delete_by_tag_untags(client: httpx.AsyncClient) -> None:
    digest, _ = await push_image(client, "app", "v1")
    r = await client.delete("/v2/app/manifests/v1")
    assert r.status_code == 202
    assert (await client.get("/v2/app/manifests/v1")).status_code == 404
    assert (await client.get(f"/v2/app/manifests/{digest}")).status_code == 200
    assert (await client.get("/v2/app/tags/list")).json()["tags"] == []


async def test_delete_by_digest_removes_revision_and_tags(client: httpx.AsyncClient) -> None:
    digest, _ = await push_image(client, "app", "v1")
    r = await client.put(
        "/v2/app/manifests/also",
        content=(await client.get(f"/v2/app/manifests/{digest}")).content,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert r.status_code == 201
    assert (await client.delete(f"/v2/app/manifests/{digest}")).status_code == 202
    r = await client.get(f"/v2/app/manifests/{digest}")
    assert r.status_code == 404
    assert error_code(r) == "MANIFEST_UNKNOWN"
    assert (await client.get("/v2/app/manifests/v1")).status_code == 404
    assert (await client.get("/v2/app/tags/list")).json()["tags"] == []
    r = await client.delete(f"/v2/app/manifests/{digest}")
    assert r.status_code == 404


async def test_tag_moves_at_once(client: httpx.AsyncClient) -> None:
    first, _ = await push_image(client, "app", "latest", seed=b"1")
    second, _ = await push_image(client, "app", "latest", seed=b"2")
    assert first != second
    r = await client.get("/v2/app/manifests/latest")
    assert r.headers["Docker-Content-Digest"] == second


async def test_tags_list_pagination(client: httpx.AsyncClient) -> None:
    _, body = await push_image(client, "app", "t00")
    names = [f"t{i:02d}" for i in range(1, 12)]
    for tag in names:
        r = await client.put(
            f"/v2/app/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST}
        )
        assert r.status_code == 201
    r = await client.get("/v2/app/tags/list")
    assert r.json()["tags"] == ["t00", *names]
    assert "Link" not in r.headers

    collected, url = [], "/v2/app/tags/list?n=5"
    while url:
        r = await client.get(url)
        page = r.json()["tags"]
        assert len(page) <= 5
        collected += page
        link = r.headers.get("Link")
        url = link[1 : link.index(">")] if link else ""
        if link:
            assert link.endswith('rel="next"')
    assert collected == ["t00", *names]

    r = await client.get("/v2/app/tags/list", params={"n": 3, "last": "t05"})
    assert r.json()["tags"] == ["t06", "t07", "t08"]
    r = await client.get("/v2/app/tags/list", params={"n": 0})
    assert r.json()["tags"] == []


async def test_tags_list_unknown_repository(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/nothing/tags/list")
    assert r.status_code == 404
    assert error_code(r) == "NAME_UNKNOWN"


async def test_catalog_pagination(client: httpx.AsyncClient) -> None:
    names = ["a/one", "a/two", "b", "c/d/e", "zeta"]
    for name in names:
        await push_image(client, name, "v1")
    r = await client.get("/v2/_catalog")
    assert r.json() == {"repositories": names}
    r = await client.get("/v2/_catalog", params={"n": 2})
    assert r.json()["repositories"] == ["a/one", "a/two"]
    assert r.headers["Link"] == '</v2/_catalog?n=2&last=a%2Ftwo>; rel="next"'
    r = await client.get("/v2/_catalog", params={"n": 2, "last": "a/two"})
    assert r.json()["repositories"] == ["b", "c/d/e"]
    r = await client.get("/v2/_catalog", params={"n": 2, "last": "c/d/e"})
    assert r.json()["repositories"] == ["zeta"]
    assert "Link" not in r.headers


async def test_unknown_manifest(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/app/manifests/latest")
    assert r.status_code == 404
    assert error_code(r) == "MANIFEST_UNKNOWN"
    r = await client.head("/v2/app/manifests/latest")
    assert r.status_code == 404


async def test_health_and_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200
    await client.get("/v2/")
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert "http_server_request_duration" in r.text
