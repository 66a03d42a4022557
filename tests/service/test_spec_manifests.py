"""Three behaviours of the OCI distribution spec around manifests, on every storage driver.

- A reference that is neither a tag nor digest-shaped names nothing: GET/HEAD (and DELETE)
  answer 404 ``MANIFEST_UNKNOWN``; a PUT to it stays 400 ``TAG_INVALID`` (a malformed digest
  stays 400 ``DIGEST_INVALID`` for every method: test_hostile.test_bad_digests).
- A push by digest with ``?tag=a&tag=b`` creates those tags and lists them in ``OCI-Tag``.
- ``validation.manifests.allow_sparse``: manifests and indexes whose blobs or children are
  absent are accepted (mirrors copying only some platforms), and read back like any other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from berth.registry.digest import Digest
from berth.storage import paths
from berth.storage.driver import PathNotFound, StorageDriver

from .conftest import Backend, error_code, push_blob, push_image, sha256

REPO = "spec/app"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
SIGNATURE = "application/vnd.example.signature.v1"


def digest_of(body: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"


def absent(seed: str) -> str:
    """The digest of content that was never pushed."""
    return sha256(f"never pushed: {seed}".encode())


def image(config: str, config_size: int, layers: list[tuple[str, int]], **extra: Any) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config, "size": config_size},
            "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": s} for d, s in layers],
            **extra,
        }
    ).encode()


def index(children: list[tuple[str, int, str]]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": d,
                    "size": s,
                    "platform": {"os": "linux", "architecture": arch},
                }
                for d, s, arch in children
            ],
        }
    ).encode()


def artifact(subject: str, subject_size: int, subject_type: str = OCI_MANIFEST) -> bytes:
    """A referrer whose config and layer were never pushed (sparse on its own)."""
    return image(
        absent("artifact config"),
        2,
        [(absent("signature"), 42)],
        artifactType=SIGNATURE,
        subject={"mediaType": subject_type, "digest": subject, "size": subject_size},
    )


async def put(
    client: httpx.AsyncClient,
    reference: str,
    body: bytes,
    media_type: str = OCI_MANIFEST,
    tags: list[str] | None = None,
) -> httpx.Response:
    return await client.put(
        f"/v2/{REPO}/manifests/{reference}",
        content=body,
        headers={"Content-Type": media_type},
        params=[("tag", t) for t in tags or []],
    )


async def tag_list(client: httpx.AsyncClient, name: str = REPO) -> list[str]:
    r = await client.get(f"/v2/{name}/tags/list")
    assert r.status_code == 200, r.text
    return list(r.json()["tags"] or [])


def oci_tags(r: httpx.Response) -> list[str]:
    """Every value of every OCI-Tag field (a list field: RFC 9110, section 5.3)."""
    return [t.strip() for field in r.headers.get_list("OCI-Tag") for t in field.split(",")]


async def assert_manifest(
    client: httpx.AsyncClient, reference: str, body: bytes, media_type: str
) -> None:
    """GET and HEAD by ``reference`` answer the stored bytes and their digest."""
    r = await client.get(f"/v2/{REPO}/manifests/{reference}")
    assert r.status_code == 200, r.text
    assert r.content == body
    assert r.headers["Docker-Content-Digest"] == digest_of(body)
    assert r.headers["Content-Type"] == media_type
    r = await client.head(f"/v2/{REPO}/manifests/{reference}")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["Content-Length"] == str(len(body))
    assert r.headers["Docker-Content-Digest"] == digest_of(body)


# --- references that are neither tags nor digests --------------------------------------------

NOT_REFERENCES = [
    ".INVALID_MANIFEST_NAME",  # what the OCI conformance suite asks for as a missing manifest
    "-dash",
    "a" * 129,
    "lat est",
    "tag+build",
    "t\u00e9g",
]


@pytest.mark.parametrize("reference", NOT_REFERENCES, ids=[r[:20] for r in NOT_REFERENCES])
async def test_reference_neither_tag_nor_digest_is_unknown(
    client: httpx.AsyncClient, reference: str
) -> None:
    _, body = await push_image(client, REPO, "latest")
    url = f"/v2/{REPO}/manifests/{reference}"
    r = await client.get(url)
    assert (r.status_code, error_code(r)) == (404, "MANIFEST_UNKNOWN"), r.text
    r = await client.head(url)
    assert r.status_code == 404
    r = await client.delete(url)
    assert (r.status_code, error_code(r)) == (404, "MANIFEST_UNKNOWN"), r.text
    # Creating it is another matter: the name itself is wrong.
    r = await client.put(url, content=body, headers={"Content-Type": OCI_MANIFEST})
    assert (r.status_code, error_code(r)) == (400, "TAG_INVALID"), r.text
    assert await tag_list(client) == ["latest"]


# --- the tag query parameter -----------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
async def test_push_by_digest_with_tags(client: httpx.AsyncClient, algorithm: str) -> None:
    config = b'{"architecture": "amd64", "os": "linux"}'
    layer = b"layer for tags"
    body = image(
        await push_blob(client, REPO, config),
        len(config),
        [(await push_blob(client, REPO, layer), len(layer))],
    )
    digest = digest_of(body, algorithm)
    # A push refused for its content creates none of its tags.
    refused = image(absent("config"), 2, [])
    r = await put(client, digest_of(refused, algorithm), refused, tags=["a"])
    assert (r.status_code, error_code(r)) == (400, "MANIFEST_BLOB_UNKNOWN"), r.text
    # Without tags, no OCI-Tag.
    r = await put(client, digest, body)
    assert r.status_code == 201, r.text
    assert "OCI-Tag" not in r.headers
    assert await tag_list(client) == []

    r = await put(client, digest, body, tags=["a", "b", "v1.0.0-rc.1_x", "a"])
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Location"].endswith(f"/v2/{REPO}/manifests/{digest}")
    assert oci_tags(r) == ["a", "b", "v1.0.0-rc.1_x"]  # each once, in the order asked
    assert sorted(await tag_list(client)) == ["a", "b", "v1.0.0-rc.1_x"]
    for tag in ("a", "b", "v1.0.0-rc.1_x"):
        r = await client.get(f"/v2/{REPO}/manifests/{tag}")
        assert r.status_code == 200, r.text
        assert r.content == body
        assert r.headers["Docker-Content-Digest"] == digest
    r = await client.get(f"/v2/{REPO}/manifests/{digest}")
    assert (r.status_code, r.content) == (200, body)


async def test_tag_parameter_moves_tags_on_push_by_digest_only(client: httpx.AsyncClient) -> None:
    """The spec defines ``tag`` for a push by digest only. A push by tag ignores it: without
    an ``OCI-Tag`` answer, a client knows to push the other tags itself."""
    await push_image(client, REPO, "latest", seed=b"old")
    new, body = await push_image(client, REPO, None, seed=b"new")
    r = await put(client, "v1", body, tags=["other", "-not-even-valid"])
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == new
    assert "OCI-Tag" not in r.headers
    assert sorted(await tag_list(client)) == ["latest", "v1"]

    r = await put(client, new, body, tags=["latest", "new"])
    assert r.status_code == 201, r.text
    assert oci_tags(r) == ["latest", "new"]
    r = await client.head(f"/v2/{REPO}/manifests/latest")
    assert r.headers["Docker-Content-Digest"] == new
    assert sorted(await tag_list(client)) == ["latest", "new", "v1"]


@pytest.mark.parametrize("bad", ["-bad", "", "a" * 129, "x/y", "x:y"])
async def test_invalid_tag_parameter_writes_nothing(client: httpx.AsyncClient, bad: str) -> None:
    await push_image(client, REPO, "latest", seed=b"old")
    config = b"{}"
    body = image(await push_blob(client, REPO, config), len(config), [])
    digest = digest_of(body)
    r = await put(client, digest, body, tags=["fine", bad, "latest"])
    assert (r.status_code, error_code(r)) == (400, "TAG_INVALID"), r.text
    assert await tag_list(client) == ["latest"]
    r = await client.head(f"/v2/{REPO}/manifests/latest")
    assert r.headers["Docker-Content-Digest"] != digest
    # The manifest itself was not stored either.
    r = await client.get(f"/v2/{REPO}/manifests/{digest}")
    assert (r.status_code, error_code(r)) == (404, "MANIFEST_UNKNOWN")


# --- sparse content (validation.manifests.allow_sparse) --------------------------------------


@pytest.fixture
async def sparse(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a registry on the same storage as ``client``/``storage``, configured as
    operators do: by the environment."""
    monkeypatch.setenv("BERTH_VALIDATION__MANIFESTS__ALLOW_SPARSE", "true")
    settings = backend.settings(redirect=False)
    monkeypatch.delenv("BERTH_VALIDATION__MANIFESTS__ALLOW_SPARSE")  # for this client only
    assert settings.validation.manifests.allow_sparse
    async with backend.client(settings) as c:
        yield c


async def test_sparse_image(client: httpx.AsyncClient, sparse: httpx.AsyncClient) -> None:
    config = b'{"os": "linux"}'
    config_digest = await push_blob(sparse, REPO, config)
    missing = absent("layer 1")
    body = image(config_digest, len(config), [(missing, 1000), (absent("layer 2"), 2000)])
    digest = digest_of(body)
    # Strict by default: the same storage without allow_sparse refuses it.
    r = await put(client, "v1", body)
    assert (r.status_code, error_code(r)) == (400, "MANIFEST_BLOB_UNKNOWN"), r.text
    assert await tag_list(client) == []

    r = await put(sparse, "v1", body)
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == digest
    await assert_manifest(sparse, "v1", body, OCI_MANIFEST)
    await assert_manifest(sparse, digest, body, OCI_MANIFEST)
    assert await tag_list(sparse) == ["v1"]
    # What is absent stays absent; what is present is served.
    r = await sparse.get(f"/v2/{REPO}/blobs/{missing}")
    assert (r.status_code, error_code(r)) == (404, "BLOB_UNKNOWN")
    r = await sparse.get(f"/v2/{REPO}/blobs/{config_digest}", follow_redirects=True)
    assert (r.status_code, r.content) == (200, config)
    # And it is deleted like any manifest.
    r = await sparse.delete(f"/v2/{REPO}/manifests/{digest}")
    assert r.status_code == 202, r.text
    r = await sparse.get(f"/v2/{REPO}/manifests/v1")
    assert (r.status_code, error_code(r)) == (404, "MANIFEST_UNKNOWN")

    # Only absence is forgiven: a blob that is there must match its descriptor, and the
    # manifest must still be one.
    wrong = image(config_digest, len(config) + 1, [(missing, 1000)])
    r = await put(sparse, "v2", wrong)
    assert (r.status_code, error_code(r)) == (400, "MANIFEST_INVALID"), r.text
    assert "size" in r.json()["errors"][0]["message"]
    r = await put(sparse, "v2", b'{"schemaVersion": 2, "layers": "no"}')
    assert (r.status_code, error_code(r)) == (400, "MANIFEST_INVALID"), r.text
    assert await tag_list(sparse) == []


async def test_sparse_image_with_nothing_present(sparse: httpx.AsyncClient) -> None:
    """A repository can start with a sparse manifest: no blob of it anywhere."""
    body = image(absent("config"), 20, [(absent("layer"), 30)])
    r = await put(sparse, digest_of(body), body, tags=["only"])
    assert r.status_code == 201, r.text
    assert oci_tags(r) == ["only"]
    await assert_manifest(sparse, "only", body, OCI_MANIFEST)
    assert await tag_list(sparse) == ["only"]


async def test_sparse_blob_of_another_repository_is_not_linked(sparse: httpx.AsyncClient) -> None:
    """A blob present only in another repository counts as absent: accepted, never served."""
    secret = b"another repository's layer"
    secret_digest = await push_blob(sparse, "spec/other", secret)
    body = image(absent("config"), 2, [(secret_digest, len(secret))])
    r = await put(sparse, "v1", body)
    assert r.status_code == 201, r.text
    r = await sparse.get(f"/v2/{REPO}/blobs/{secret_digest}")
    assert (r.status_code, error_code(r)) == (404, "BLOB_UNKNOWN")


async def test_sparse_index(client: httpx.AsyncClient, sparse: httpx.AsyncClient) -> None:
    """A mirror that copied only amd64 of a two-platform index."""
    present, present_body = await push_image(sparse, REPO, None, seed=b"amd64")
    missing = absent("arm64 image")
    body = index([(present, len(present_body), "amd64"), (missing, 1234, "arm64")])
    digest = digest_of(body)
    # Strict by default: the same storage without allow_sparse refuses it.
    r = await put(client, "multi", body, OCI_INDEX)
    assert (r.status_code, error_code(r)) == (400, "MANIFEST_BLOB_UNKNOWN"), r.text
    assert await tag_list(client) == []

    r = await put(sparse, "multi", body, OCI_INDEX)
    assert r.status_code == 201, r.text
    await assert_manifest(sparse, "multi", body, OCI_INDEX)
    await assert_manifest(sparse, digest, body, OCI_INDEX)
    await assert_manifest(sparse, present, present_body, OCI_MANIFEST)
    r = await sparse.get(f"/v2/{REPO}/manifests/{missing}")
    assert (r.status_code, error_code(r)) == (404, "MANIFEST_UNKNOWN")
    r = await sparse.head(f"/v2/{REPO}/manifests/{missing}")
    assert r.status_code == 404
    assert await tag_list(sparse) == ["multi"]
    # Tagged again by digest, with the tag parameter.
    r = await put(sparse, digest, body, OCI_INDEX, tags=["latest", "1.0"])
    assert r.status_code == 201, r.text
    assert oci_tags(r) == ["latest", "1.0"]
    assert sorted(await tag_list(sparse)) == ["1.0", "latest", "multi"]
    await assert_manifest(sparse, "1.0", body, OCI_INDEX)


async def test_sparse_index_of_sparse_children(sparse: httpx.AsyncClient) -> None:
    """Children pushed sparse themselves, then an index over them and a missing one."""
    child = image(absent("config"), 2, [(absent("layer"), 3)])
    r = await put(sparse, digest_of(child), child)
    assert r.status_code == 201, r.text
    body = index([(digest_of(child), len(child), "amd64"), (absent("x"), 9, "s390x")])
    r = await put(sparse, digest_of(body), body, OCI_INDEX, tags=["v2"])
    assert r.status_code == 201, r.text
    await assert_manifest(sparse, "v2", body, OCI_INDEX)
    await assert_manifest(sparse, digest_of(child), child, OCI_MANIFEST)


async def test_sparse_referrers(sparse: httpx.AsyncClient) -> None:
    """Referrers of a sparse index and of its absent child, themselves sparse."""
    present, present_body = await push_image(sparse, REPO, None, seed=b"amd64")
    missing = absent("arm64 image")
    body = index([(present, len(present_body), "amd64"), (missing, 1234, "arm64")])
    r = await put(sparse, "multi", body, OCI_INDEX)
    assert r.status_code == 201, r.text
    on_index = artifact(digest_of(body), len(body), OCI_INDEX)
    on_missing = artifact(missing, 1234)
    for referrer in (on_index, on_missing):
        r = await put(sparse, digest_of(referrer), referrer)
        assert r.status_code == 201, r.text
        assert r.headers["OCI-Subject"] in (digest_of(body), missing)

    for subject, referrer in ((digest_of(body), on_index), (missing, on_missing)):
        r = await sparse.get(f"/v2/{REPO}/referrers/{subject}")
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"].startswith(OCI_INDEX)
        listed = r.json()["manifests"]
        assert [m["digest"] for m in listed] == [digest_of(referrer)]
        assert listed[0]["artifactType"] == SIGNATURE
        assert listed[0]["size"] == len(referrer)
        r = await sparse.get(
            f"/v2/{REPO}/referrers/{subject}", params={"artifactType": "application/other"}
        )
        assert r.status_code == 200 and r.json()["manifests"] == []
    r = await sparse.get(f"/v2/{REPO}/referrers/{present}")
    assert r.status_code == 200 and r.json()["manifests"] == []


@pytest.mark.usefixtures("no_reservation_reuse")
async def test_sparse_push_reserves_what_is_present(
    sparse: httpx.AsyncClient, storage: StorageDriver
) -> None:
    """The GC handshake (BlobStore.reserve: rewrite the blob's ``touch``) still runs for every
    referenced blob and child that is present; an absent one is skipped and gets nothing.
    (Reuse off, so every reservation writes: test_gc_reservation_reuse.py covers reuse.)"""
    config = b'{"os": "linux"}'
    layer = b"a present layer"
    config_digest = await push_blob(sparse, REPO, config)
    layer_digest = await push_blob(sparse, REPO, layer)
    missing_layer = absent("layer")
    body = image(config_digest, len(config), [(layer_digest, len(layer)), (missing_layer, 7)])
    child, child_body = await push_image(sparse, REPO, None, seed=b"child")
    missing_child = absent("child")
    idx = index([(child, len(child_body), "amd64"), (missing_child, 50, "arm64")])

    present = [Digest.parse(d) for d in (config_digest, layer_digest, child)]
    for d in present:
        await storage.delete(paths.blob_touch(d))
    r = await put(sparse, "img", body)
    assert r.status_code == 201, r.text
    r = await put(sparse, "idx", idx, OCI_INDEX)
    assert r.status_code == 201, r.text
    for d in present:
        await storage.stat(paths.blob_touch(d))  # written again by the pushes
    for d in (missing_layer, missing_child):
        with pytest.raises(PathNotFound):
            await storage.stat(paths.blob_touch(Digest.parse(d)))
        with pytest.raises(PathNotFound):
            await storage.stat(paths.blob_data(Digest.parse(d)))
