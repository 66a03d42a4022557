"""Malformed and hostile requests through the ASGI app.

Every request here must get the OCI error envelope ``{"errors": [{"code", "message", "detail"}]}``
with the spec's code and status, and must leave storage exactly as it was: the set of objects in
storage and their bytes are compared before and after (upload sessions the test opened itself are
left out of the comparison). Every test runs on every storage driver (tests/service/conftest.py),
and reads storage through the app's driver, below the registry's caches.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiobotocore.session import AioSession, get_session

from berth.app import create_app
from berth.storage.driver import ObjectInfo, PathNotFound, StorageDriver
from berth.storage.factory import create_driver
from berth.storage.s3 import S3Driver

from .conftest import Backend, push_blob, push_image, sha256

REPO = "hostile/app"
OTHER = "hostile/other"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
FOREIGN = "application/vnd.oci.image.layer.nondistributable.v1.tar"
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
LIMIT = 4 * 1024 * 1024
UNKNOWN = "sha256:" + "0" * 64
UNKNOWN_UPLOAD = "00000000-0000-4000-8000-000000000000"
MTIME_MARGIN = 1.5  # seconds: S3's whole-second modification times, and clock reading slack


@dataclass
class Env:
    client: httpx.AsyncClient
    storage: StorageDriver  # the app's driver (the registry's caches sit above it)
    backend: Backend
    config: str = ""  # digest of a config blob in REPO
    config_size: int = 0
    layer: bytes = b""
    layer_digest: str = ""
    image: str = ""  # digest of the image tagged REPO:latest
    opened: set[str] = field(default_factory=set)  # upload ids this test opened
    # Bytes read so far, by (key, size, modified), with the time each GET was sent.
    _read: dict[tuple[str, int, float], tuple[bytes, float]] = field(default_factory=dict)
    requests: int = 0  # requests sent so far (counted by the client's event hook)
    # The last snapshot ``expect`` took, with ``requests`` then: the next ``expect`` starts
    # from it when no request has been sent since (tests write storage only by requests).
    _last: tuple[int, dict[str, bytes]] | None = None

    async def snapshot(self) -> dict[str, bytes]:
        """Every object in storage with its bytes, minus the sessions the test opened.

        A blob's ``touch`` is left out where the blob exists: writers rewrite it to hold off a
        concurrent GC (docs/gc.md) even when the request then fails. A ``touch`` without the
        blob's ``data`` is garbage a failed request left behind, and is counted. The S3
        writer's own objects (``….berth-mpu`` state, ``….berth-tail-…`` parts, which ``walk``
        shows and ``list`` hides) live beside the upload's ``data``, inside its session, so
        they are left out with the session, and counted anywhere else.
        """
        infos: list[ObjectInfo] = []
        async for info in self.storage.walk(""):
            if info.key.endswith("/"):
                continue  # a directory entry some stores (SeaweedFS) keep: not an object
            if any(f"/_uploads/{u}/" in info.key for u in self.opened):
                continue
            infos.append(info)
        keys = {info.key for info in infos}
        infos = [
            i
            for i in infos
            if not (i.key.endswith("/touch") and i.key[: -len("touch")] + "data" in keys)
        ]
        sent = time.time()
        fresh = [i for i in infos if not self._still_read(i)]
        found = await asyncio.gather(*(self._get(i.key) for i in fresh))
        for info, data in zip(fresh, found, strict=True):
            self._read[(info.key, info.size, info.modified)] = (data, sent)
        return {i.key: self._read[(i.key, i.size, i.modified)][0] for i in infos}

    def _still_read(self, info: ObjectInfo) -> bool:
        """Whether bytes read earlier are still the object's: one walk per snapshot, and a GET
        only where they may not be. An object rewritten after a GET sent at ``t`` has a
        modification time of at least ``t - 1`` (S3 keeps whole seconds); so the same size
        and modification time, older than that by a margin, mean the same bytes."""
        read = self._read.get((info.key, info.size, info.modified))
        return read is not None and info.modified < read[1] - MTIME_MARGIN

    async def _get(self, key: str) -> bytes:
        try:
            return await self.storage.get(key)
        except PathNotFound:  # gone since the walk: the next walk shows the change
            return b"<gone>"

    async def stored(self, name: str) -> list[str]:
        """Keys with a segment ``name`` (on the filesystem also directories, empty or not)."""
        found = [i.key async for i in self.storage.walk("") if name in i.key.split("/")]
        if self.backend.kind == "filesystem":
            found += [p.as_posix() for p in self.backend.root.rglob(name)]
        return found

    async def session(self, name: str = REPO) -> str:
        r = await self.client.post(f"/v2/{name}/blobs/uploads/")
        assert r.status_code == 202, r.text
        self.opened.add(r.headers["Docker-Upload-UUID"])
        return r.headers["Location"]

    async def expect(
        self,
        method: str,
        url: str,
        status: int,
        code: str | None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send one request; check status, the error envelope and that storage is unchanged."""
        if self._last is not None and self._last[0] == self.requests:
            before = self._last[1]
        else:
            before = await self.snapshot()
        r = await self.client.request(method, url, **kwargs)
        assert r.status_code == status, (method, url, r.status_code, r.text)
        if code is not None and method != "HEAD":
            assert_envelope(r, code)
        if r.status_code == 202 and "Docker-Upload-UUID" in r.headers:
            self.opened.add(r.headers["Docker-Upload-UUID"])  # a session this request opened
        after = await self.snapshot()
        self._last = (self.requests, after)
        assert after.keys() == before.keys(), (
            f"storage changed: added {sorted(after.keys() - before.keys())}, "
            f"removed {sorted(before.keys() - after.keys())}"
        )
        changed = [k for k in before if before[k] != after[k]]
        assert not changed, f"storage changed: {changed}"
        return r

    async def offset(self, location: str) -> str:
        r = await self.client.get(location)
        assert r.status_code == 204, r.text
        return r.headers["Range"]


def assert_envelope(r: httpx.Response, code: str) -> None:
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert list(body) == ["errors"], body
    assert len(body["errors"]) == 1, body
    error = body["errors"][0]
    assert set(error) == {"code", "message", "detail"}, error
    assert error["code"] == code, body
    assert isinstance(error["message"], str) and error["message"]


@functools.cache
def _aio_session() -> AioSession:
    return get_session()


@pytest.fixture
async def env(backend: Backend) -> AsyncIterator[Env]:
    # One driver serves the app and the snapshots, and S3 drivers share one botocore session
    # (a new one loads the service model again: more than the rest of a test costs).
    # The registry's caches sit above the driver, so snapshots see what is in storage.
    settings = backend.settings(redirect=False)
    if settings.storage.driver == "s3":
        storage: StorageDriver = S3Driver(settings.storage.s3, session=_aio_session())
    else:
        storage = create_driver(settings)
    await storage.start()
    try:
        transport = httpx.ASGITransport(app=create_app(settings, driver=storage))
        async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
            e = Env(client, storage, backend)

            async def count(_request: httpx.Request) -> None:
                e.requests += 1

            client.event_hooks["request"].append(count)
            # Something in storage, so that "unchanged" means something: a tagged image, a blob.
            e.image, body = await push_image(client, REPO, "latest")
            config = json.loads(body)["config"]
            e.config, e.config_size = config["digest"], config["size"]
            e.layer = b"hostile layer bytes" * 10
            e.layer_digest = await push_blob(client, REPO, e.layer)
            yield e
    finally:
        await storage.close()


def manifest(env: Env, **overrides: Any) -> dict[str, Any]:
    config = {"mediaType": OCI_CONFIG, "digest": env.config, "size": env.config_size}
    layer = {"mediaType": OCI_LAYER, "digest": env.layer_digest, "size": len(env.layer)}
    m: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": [layer],
    }
    m.update(overrides)
    return {k: v for k, v in m.items() if v is not _DROP}


_DROP = object()


def body_of(m: Any) -> bytes:
    return json.dumps(m).encode()


# --- the baseline works ---------------------------------------------------------------------


async def test_valid_manifest_is_accepted(env: Env) -> None:
    """The hostile variants below are rejected because of what they change, not the base."""
    r = await env.client.put(
        f"/v2/{REPO}/manifests/ok",
        content=body_of(manifest(env)),
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert r.status_code == 201, r.text


async def test_snapshot_sees_a_rewrite_of_the_same_size(env: Env) -> None:
    """The harness itself: a tag link rewritten to another digest (same size, and on S3 maybe
    the same second) is a change, whether or not the snapshot had the object's bytes already."""
    link = f"docker/registry/v2/repositories/{REPO}/_manifests/tags/latest/current/link"
    original = await env.storage.get(link)
    for settle in (0.0, MTIME_MARGIN + 1.0):  # bytes read just now; bytes old enough to reuse
        await asyncio.sleep(settle)
        before = await env.snapshot()
        assert before[link] == original
        await env.storage.put(link, env.config.encode())
        assert len(env.config.encode()) == len(original)
        after = await env.snapshot()
        assert after[link] == env.config.encode(), settle
        await env.storage.put(link, original)
        assert (await env.snapshot())[link] == original


# --- manifests: bad JSON, media types, schema 1 ---------------------------------------------

BAD_JSON = [
    b"",
    b"{",
    b"not json",
    b"\xff\xfe{}",
    b"[]",
    b'"a string"',
    b"null",
    b"42",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'", "config": ',
    b'{"schemaVersion": 2, "layers": [], "config": {"size": 1' + b"0" * 5000 + b"}}",
    b'{"schemaVersion": 2, "layers": [], "extra": NaN}',  # Python's json takes these; JSON not
    b'{"schemaVersion": 2, "layers": [], "extra": [Infinity, -Infinity]}',
]


@pytest.mark.parametrize("body", BAD_JSON, ids=range(len(BAD_JSON)))
async def test_bad_json_manifest(env: Env, body: bytes) -> None:
    await env.expect(
        "PUT",
        f"/v2/{REPO}/manifests/latest",
        400,
        "MANIFEST_INVALID",
        content=body,
        headers={"Content-Type": OCI_MANIFEST},
    )


def _bad_manifests(env: Env) -> list[tuple[str, dict[str, Any] | Any, str | None]]:
    """(case, manifest, Content-Type) that are all MANIFEST_INVALID."""
    good_config = manifest(env)["config"]
    layer = manifest(env)["layers"][0]
    return [
        ("unknown media type", manifest(env, mediaType="application/vnd.evil+json"), None),
        (
            "unknown media type and content type",
            manifest(env, mediaType="application/vnd.evil+json"),
            "application/vnd.evil+json",
        ),
        ("media type not a string", manifest(env, mediaType=123), OCI_MANIFEST),
        ("media type vs content type", manifest(env), OCI_INDEX),
        ("docker type on OCI body", manifest(env, mediaType=DOCKER_MANIFEST), OCI_MANIFEST),
        ("schema1 by content type", {"schemaVersion": 1, "name": REPO, "tag": "x"}, SCHEMA1),
        (
            "schema1 signed",
            {"schemaVersion": 1, "mediaType": SCHEMA1_SIGNED, "fsLayers": []},
            SCHEMA1_SIGNED,
        ),
        ("schema1 declared", manifest(env, mediaType=SCHEMA1, schemaVersion=1), None),
        ("schemaVersion 1", manifest(env, schemaVersion=1), OCI_MANIFEST),
        ("schemaVersion string", manifest(env, schemaVersion="2"), OCI_MANIFEST),
        ("schemaVersion float", manifest(env, schemaVersion=2.0), OCI_MANIFEST),
        ("schemaVersion missing", manifest(env, schemaVersion=_DROP), OCI_MANIFEST),
        ("config missing", manifest(env, config=_DROP), OCI_MANIFEST),
        ("config not an object", manifest(env, config=[good_config]), OCI_MANIFEST),
        ("layers not a list", manifest(env, layers=layer), OCI_MANIFEST),
        ("layer not an object", manifest(env, layers=["x"]), OCI_MANIFEST),
        (
            "uppercase digest",
            manifest(env, layers=[{**layer, "digest": layer["digest"].upper()}]),
            OCI_MANIFEST,
        ),
        (
            "digest with trailing newline",
            manifest(env, layers=[{**layer, "digest": layer["digest"] + "\n"}]),
            OCI_MANIFEST,
        ),
        ("md5 digest", manifest(env, layers=[{**layer, "digest": "md5:" + "0" * 32}]), None),
        ("negative size", manifest(env, layers=[{**layer, "size": -1}]), OCI_MANIFEST),
        ("boolean size", manifest(env, layers=[{**layer, "size": True}]), OCI_MANIFEST),
        ("float size", manifest(env, layers=[{**layer, "size": 1.5}]), OCI_MANIFEST),
        ("string size", manifest(env, layers=[{**layer, "size": "190"}]), OCI_MANIFEST),
        ("empty media type", manifest(env, layers=[{**layer, "mediaType": ""}]), OCI_MANIFEST),
        ("annotations not strings", manifest(env, annotations={"a": 1}), OCI_MANIFEST),
        ("annotations a list", manifest(env, annotations=["a"]), OCI_MANIFEST),
        ("subject not a descriptor", manifest(env, subject="sha256:abc"), OCI_MANIFEST),
        ("index without manifests", {"schemaVersion": 2, "mediaType": OCI_INDEX}, OCI_INDEX),
        (
            "index with bad child",
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{"digest": UNKNOWN}]},
            OCI_INDEX,
        ),
        ("wrong layer size", manifest(env, layers=[{**layer, "size": 1}]), OCI_MANIFEST),
        (
            "size over int64",  # a foreign layer's size is not checked against storage
            manifest(env, layers=[{**layer, "mediaType": FOREIGN, "size": 2**63}]),
            OCI_MANIFEST,
        ),
    ]


_BAD_MANIFEST_CASES = [
    "unknown media type",
    "unknown media type and content type",
    "media type not a string",
    "media type vs content type",
    "docker type on OCI body",
    "schema1 by content type",
    "schema1 signed",
    "schema1 declared",
    "schemaVersion 1",
    "schemaVersion string",
    "schemaVersion float",
    "schemaVersion missing",
    "config missing",
    "config not an object",
    "layers not a list",
    "layer not an object",
    "uppercase digest",
    "digest with trailing newline",
    "md5 digest",
    "negative size",
    "boolean size",
    "float size",
    "string size",
    "empty media type",
    "annotations not strings",
    "annotations a list",
    "subject not a descriptor",
    "index without manifests",
    "index with bad child",
    "wrong layer size",
    "size over int64",
]


@pytest.mark.parametrize("case", _BAD_MANIFEST_CASES)
async def test_invalid_manifest(env: Env, case: str) -> None:
    cases = {c: (m, ct) for c, m, ct in _bad_manifests(env)}
    assert cases.keys() == set(_BAD_MANIFEST_CASES)
    m, content_type = cases[case]
    headers = {"Content-Type": content_type} if content_type else {}
    for reference in ("latest", sha256(body_of(m))):
        await env.expect(
            "PUT",
            f"/v2/{REPO}/manifests/{reference}",
            400,
            "MANIFEST_INVALID",
            content=body_of(m),
            headers=headers,
        )


async def test_manifest_shape_must_agree_with_content_type(env: Env) -> None:
    """Without ``mediaType`` the stored type comes from the body's shape (as on every later
    read, where no Content-Type exists): a Content-Type naming another type is refused, or the
    registry would store a manifest it later serves as something else, or cannot serve at all."""
    m = manifest(env, mediaType=_DROP, manifests="not a list")
    await env.expect(
        "PUT",
        f"/v2/{REPO}/manifests/latest",
        400,
        "MANIFEST_INVALID",
        content=body_of(m),
        headers={"Content-Type": OCI_MANIFEST},
    )
    docker_without_media_type = manifest(env, mediaType=_DROP)
    await env.expect(
        "PUT",
        f"/v2/{REPO}/manifests/latest",
        400,
        "MANIFEST_INVALID",
        content=body_of(docker_without_media_type),
        headers={"Content-Type": DOCKER_MANIFEST},
    )


# --- manifests referencing what is not there -------------------------------------------------


async def test_manifest_with_unknown_layer(env: Env) -> None:
    layers = [{"mediaType": OCI_LAYER, "digest": UNKNOWN, "size": 3}]
    r = await env.expect(
        "PUT",
        f"/v2/{REPO}/manifests/latest",
        400,
        "MANIFEST_BLOB_UNKNOWN",
        content=body_of(manifest(env, layers=layers)),
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert UNKNOWN in json.dumps(r.json())


async def test_manifest_with_unknown_config(env: Env) -> None:
    config = {"mediaType": OCI_CONFIG, "digest": "sha512:" + "a" * 128, "size": 2}
    await env.expect(
        "PUT",
        f"/v2/{REPO}/manifests/latest",
        400,
        "MANIFEST_BLOB_UNKNOWN",
        content=body_of(manifest(env, config=config)),
        headers={"Content-Type": OCI_MANIFEST},
    )


async def test_manifest_with_blob_of_another_repository(env: Env) -> None:
    """A blob stored for another repository is not this one's to reference."""
    data = b"only in the other repository"
    digest = await push_blob(env.client, OTHER, data)
    layers = [{"mediaType": OCI_LAYER, "digest": digest, "size": len(data)}]
    await env.expect(
        "PUT",
        f"/v2/{REPO}/manifests/latest",
        400,
        "MANIFEST_BLOB_UNKNOWN",
        content=body_of(manifest(env, layers=layers)),
        headers={"Content-Type": OCI_MANIFEST},
    )


async def test_index_with_unknown_child(env: Env) -> None:
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": env.image, "size": 10},
            {"mediaType": OCI_MANIFEST, "digest": UNKNOWN, "size": 10},
        ],
    }
    await env.expect(
        "PUT",
        f"/v2/{REPO}/manifests/latest",
        400,
        "MANIFEST_BLOB_UNKNOWN",
        content=body_of(index),
        headers={"Content-Type": OCI_INDEX},
    )


async def test_put_by_wrong_digest(env: Env) -> None:
    body = body_of(manifest(env))
    for wrong in (UNKNOWN, "sha512:" + hashlib.sha512(body + b" ").hexdigest()):
        await env.expect(
            "PUT",
            f"/v2/{REPO}/manifests/{wrong}",
            400,
            "DIGEST_INVALID",
            content=body,
            headers={"Content-Type": OCI_MANIFEST},
        )


# --- huge bodies -------------------------------------------------------------------------------


async def test_manifest_over_4_mib(env: Env) -> None:
    m = manifest(env, annotations={"padding": "x" * LIMIT})
    await env.expect(
        "PUT",
        f"/v2/{REPO}/manifests/latest",
        413,
        "MANIFEST_INVALID",
        content=body_of(m),
        headers={"Content-Type": OCI_MANIFEST},
    )


async def test_manifest_over_4_mib_streamed_without_length(env: Env) -> None:
    async def stream() -> AsyncIterator[bytes]:
        yield b'{"schemaVersion": 2, "annotations": {"a": "'
        for _ in range(5):
            yield b"x" * (1024 * 1024)
        yield b'"}}'

    await env.expect(
        "PUT",
        f"/v2/{REPO}/manifests/latest",
        413,
        "MANIFEST_INVALID",
        content=stream(),
        headers={"Content-Type": OCI_MANIFEST},
    )


async def test_manifest_lying_content_length(env: Env) -> None:
    small = body_of(manifest(env))
    # Declares more than the limit: refused before reading.
    await env.expect(
        "PUT",
        f"/v2/{REPO}/manifests/latest",
        413,
        "MANIFEST_INVALID",
        content=small,
        headers={"Content-Type": OCI_MANIFEST, "Content-Length": str(LIMIT + 1)},
    )
    # Declares little, sends more than the limit: refused while reading.
    big = body_of(manifest(env, annotations={"padding": "x" * LIMIT}))
    await env.expect(
        "PUT",
        f"/v2/{REPO}/manifests/latest",
        413,
        "MANIFEST_INVALID",
        content=big,
        headers={"Content-Type": OCI_MANIFEST, "Content-Length": "100"},
    )
    # Not a number at all.
    for value in ("-1", "abc", "1e3", "9" * 30):
        await env.expect(
            "PUT",
            f"/v2/{REPO}/manifests/latest",
            400,
            "SIZE_INVALID",
            content=small,
            headers={"Content-Type": OCI_MANIFEST, "Content-Length": value},
        )


# --- names ---------------------------------------------------------------------------------

BAD_NAMES = [
    "%2e%2e",
    "%2e%2e/app",
    "hostile/%2e%2e/app",
    "hostile/%2E%2E/%2e%2e/%2e%2e/etc",
    "hostile/%2e/app",
    "hostile%2F..%2Fapp",
    "hostile%2F%2e%2e%2F%2e%2e",
    "hostile//app",
    "hostile/app/",
    "%2Fhostile/app",
    "Hostile/app",
    "hostile/APP",
    "hostile/-app",
    "hostile/app-",
    "hostile/_uploads",
    "hostile/app%00",
    "hostile%5C..%5Capp",
    "hostile/app%0A",
    "hostile/a..b",
    "hostile/%C3%A9",
    "a" * 256,
    "/".join(["abcdefghij"] * 30),
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[n[:40] for n in BAD_NAMES])
async def test_bad_names(env: Env, name: str) -> None:
    digest = env.layer_digest
    # A newline never matches the ``{name:path}`` routes: 404 before any handler runs.
    status, code = (404, None) if "%0A" in name else (400, "NAME_INVALID")
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", f"/v2/{name}/tags/list", {}),
        ("GET", f"/v2/{name}/manifests/latest", {}),
        ("HEAD", f"/v2/{name}/manifests/latest", {}),
        ("PUT", f"/v2/{name}/manifests/latest", {"content": body_of(manifest(env))}),
        ("DELETE", f"/v2/{name}/manifests/{env.image}", {}),
        ("GET", f"/v2/{name}/blobs/{digest}", {}),
        ("DELETE", f"/v2/{name}/blobs/{digest}", {}),
        ("POST", f"/v2/{name}/blobs/uploads/", {}),
        (
            "POST",
            f"/v2/{name}/blobs/uploads/",
            {"params": {"digest": digest}, "content": env.layer},
        ),
        ("POST", f"/v2/{name}/blobs/uploads/", {"params": {"mount": digest, "from": REPO}}),
        ("GET", f"/v2/{name}/blobs/uploads/{UNKNOWN_UPLOAD}", {}),
        ("PATCH", f"/v2/{name}/blobs/uploads/{UNKNOWN_UPLOAD}", {"content": b"x"}),
        ("PUT", f"/v2/{name}/blobs/uploads/{UNKNOWN_UPLOAD}", {"params": {"digest": digest}}),
        ("DELETE", f"/v2/{name}/blobs/uploads/{UNKNOWN_UPLOAD}", {}),
        ("GET", f"/v2/{name}/referrers/{env.image}", {}),
    ]
    for method, url, kwargs in requests:
        await env.expect(method, url, status, code, **kwargs)


async def test_mount_from_bad_name_opens_a_session(env: Env) -> None:
    """A hostile ``from`` is never looked up: the mount just does not happen (202)."""
    for source in ("..", "../hostile/app", "hostile/../../x", "HOSTILE/app", "a" * 300):
        r = await env.expect(
            "POST",
            f"/v2/{OTHER}/blobs/uploads/",
            202,
            None,
            params={"mount": env.layer_digest, "from": source},
        )
        assert r.headers["Location"].startswith(f"/v2/{OTHER}/blobs/uploads/")


async def _raw_get(env: Env, path: bytes) -> tuple[int, bytes]:
    """GET with the path exactly as given (httpx would normalise ``..`` segments away)."""
    messages: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path.decode(),
        "raw_path": path,
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"registry")],
        "client": ("127.0.0.1", 1),
        "server": ("registry", 80),
    }
    transport = env.client._transport
    assert isinstance(transport, httpx.ASGITransport)
    env.requests += 1
    await transport.app(scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], body


async def test_plain_dot_dot_in_path_never_reaches_storage(env: Env) -> None:
    """A client that does not normalise ``..`` itself: the server sees the raw segments."""
    before = await env.snapshot()
    for path in (b"/v2/../../etc/tags/list", b"/v2/hostile/../../x/tags/list"):
        status, body = await _raw_get(env, path)
        assert status == 400, body
        assert json.loads(body)["errors"][0]["code"] == "NAME_INVALID"
    assert await env.snapshot() == before


# --- tags and references ---------------------------------------------------------------------

BAD_TAGS = [
    "-latest",
    ".latest",
    "%2e%2e",
    "%2e",
    "latest%0A",
    "lat%00est",
    "lat est",
    "latest%2F..",
    "a" * 129,
    "t%C3%A9g",
    "tag+build",
]


@pytest.mark.parametrize("tag", BAD_TAGS, ids=[t[:30] for t in BAD_TAGS])
async def test_bad_tags(env: Env, tag: str) -> None:
    body = body_of(manifest(env))
    if "%2F" in tag:
        # Decodes to a second path segment: no route takes it, nothing is stored.
        await env.expect("PUT", f"/v2/{REPO}/manifests/{tag}", 404, None, content=body)
        return
    await env.expect(
        "PUT",
        f"/v2/{REPO}/manifests/{tag}",
        400,
        "TAG_INVALID",
        content=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    # Looked up, a reference that is no tag (and has no ':') names nothing: 404, as clients and
    # Distribution expect; only a PUT, which would create the tag, is refused as invalid.
    for method in ("GET", "HEAD", "DELETE"):
        await env.expect(method, f"/v2/{REPO}/manifests/{tag}", 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize("tag", [*BAD_TAGS, ""], ids=[t[:30] for t in BAD_TAGS] + ["empty"])
async def test_bad_tag_parameters(env: Env, tag: str) -> None:
    """A push by digest with ``?tag=``: one invalid tag refuses the push and writes nothing,
    not even the valid tags beside it or the manifest itself."""
    body = body_of(manifest(env))
    await env.expect(
        "PUT",
        f"/v2/{REPO}/manifests/{sha256(body)}?tag=fine&tag={tag}",
        400,
        "TAG_INVALID",
        content=body,
        headers={"Content-Type": OCI_MANIFEST},
    )


BAD_DIGESTS = [
    "sha256:abc",
    "sha256:" + "A" * 64,
    "SHA256:" + "a" * 64,
    "sha384:" + "a" * 96,
    "md5:" + "a" * 32,
    "sha256:" + "a" * 128,
    "sha512:" + "a" * 64,
    "sha256:" + "a" * 64 + "%0A",
    "sha256:" + "a" * 63 + "g",
    "sha256:",
    ":",
    "sha256:%2e%2e",
]


@pytest.mark.parametrize("digest", BAD_DIGESTS, ids=[d[:16] for d in BAD_DIGESTS])
async def test_bad_digests(env: Env, digest: str) -> None:
    body = body_of(manifest(env))
    await env.expect(
        "PUT",
        f"/v2/{REPO}/manifests/{digest}",
        400,
        "DIGEST_INVALID",
        content=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    for method, url in (
        ("GET", f"/v2/{REPO}/manifests/{digest}"),
        ("HEAD", f"/v2/{REPO}/manifests/{digest}"),
        ("DELETE", f"/v2/{REPO}/manifests/{digest}"),
        ("GET", f"/v2/{REPO}/blobs/{digest}"),
        ("DELETE", f"/v2/{REPO}/blobs/{digest}"),
        ("GET", f"/v2/{REPO}/referrers/{digest}"),
    ):
        await env.expect(method, url, 400, "DIGEST_INVALID")
    await env.expect(
        "POST", f"/v2/{REPO}/blobs/uploads/", 400, "DIGEST_INVALID", params={"digest": digest}
    )
    location = await env.session()
    await env.expect("PUT", location, 400, "DIGEST_INVALID", params={"digest": digest})


# --- upload sessions -------------------------------------------------------------------------

# (Plain "." and ".." segments are normalised away by httpx; their encodings reach the app.)
BAD_UPLOAD_IDS = [
    "%2e%2e",
    "%2e",
    "not-a-uuid",
    UNKNOWN_UPLOAD.upper(),
    UNKNOWN_UPLOAD + "%0A",
    UNKNOWN_UPLOAD + "%00",
    "%2e%2e%5C%2e%2e",
    "_uploads",
    "startedat",
]


@pytest.mark.parametrize("upload_id", [*BAD_UPLOAD_IDS, UNKNOWN_UPLOAD])
async def test_bad_or_unknown_upload_ids(env: Env, upload_id: str) -> None:
    url = f"/v2/{REPO}/blobs/uploads/{upload_id}"
    await env.expect("GET", url, 404, "BLOB_UPLOAD_UNKNOWN")
    await env.expect("PATCH", url, 404, "BLOB_UPLOAD_UNKNOWN", content=b"data")
    await env.expect(
        "PATCH", url, 404, "BLOB_UPLOAD_UNKNOWN", content=b"data", headers={"Content-Range": "0-3"}
    )
    await env.expect(
        "PUT", url, 404, "BLOB_UPLOAD_UNKNOWN", params={"digest": sha256(b"d")}, content=b"d"
    )
    await env.expect("DELETE", url, 404, "BLOB_UPLOAD_UNKNOWN")


@pytest.mark.parametrize(
    "suffix", ["..%2F..%2F_layers", "%2e%2e%2F%2e%2e%2Fblobs", UNKNOWN_UPLOAD + "%2F..%2F.."]
)
async def test_upload_id_with_slashes_matches_no_route(env: Env, suffix: str) -> None:
    await env.session()
    url = f"/v2/{REPO}/blobs/uploads/{suffix}"
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        r = await env.expect(method, url, 404, None, content=b"x")
        assert "errors" in r.json()


async def test_session_of_another_repository_is_unknown(env: Env) -> None:
    location = await env.session(OTHER)
    upload_id = location.rsplit("/", 1)[1]
    url = f"/v2/{REPO}/blobs/uploads/{upload_id}"
    await env.expect("GET", url, 404, "BLOB_UPLOAD_UNKNOWN")
    await env.expect("PATCH", url, 404, "BLOB_UPLOAD_UNKNOWN", content=b"x")
    await env.expect("PUT", url, 404, "BLOB_UPLOAD_UNKNOWN", params={"digest": sha256(b"")})
    await env.expect("DELETE", url, 404, "BLOB_UPLOAD_UNKNOWN")


async def _session_at_3(env: Env) -> str:
    location = await env.session()
    r = await env.client.patch(location, content=b"abc", headers={"Content-Range": "0-2"})
    assert r.status_code == 202 and r.headers["Range"] == "0-2", r.text
    return location


@pytest.mark.parametrize(
    "content_range",
    [
        "0-2",  # overlaps what is there
        "2-4",  # overlaps one byte
        "1-1",
        "4-6",  # leaves a gap
        "100-102",
        "99999999999999999999999-99999999999999999999999",  # huge, streamed (no Content-Length)
    ],
)
async def test_out_of_order_or_overlapping_chunk(env: Env, content_range: str) -> None:
    location = await _session_at_3(env)
    start, end = (int(x) for x in content_range.split("-"))
    body = b"x" * (end - start + 1)

    async def stream() -> AsyncIterator[bytes]:
        yield body

    headers = {"Content-Range": content_range}
    r = await env.expect("PATCH", location, 416, "RANGE_INVALID", content=stream(), headers=headers)
    assert r.headers["Range"] == "0-2"
    assert await env.offset(location) == "0-2"


@pytest.mark.parametrize(
    "content_range",
    [
        "-1-2",
        "3--5",
        "-3",
        "3-",
        "5-3",
        "abc",
        "3-5-7",
        "0x3-0x5",
        "3 - 5",
        "²-³",
        "\u0663-\u0665",
        "",
        "-",
    ],
)
async def test_malformed_content_range_is_416_with_current_range(
    env: Env, content_range: str
) -> None:
    location = await _session_at_3(env)
    headers = {"Content-Range": content_range.encode("utf-8")}
    if content_range == "":
        headers = {"Content-Range": b" "}
    r = await env.expect("PATCH", location, 416, "RANGE_INVALID", content=b"xyz", headers=headers)
    assert r.headers["Range"] == "0-2"
    assert await env.offset(location) == "0-2"


async def test_content_length_not_matching_content_range(env: Env) -> None:
    location = await _session_at_3(env)
    await env.expect(
        "PATCH",
        location,
        400,
        "SIZE_INVALID",
        content=b"defgh",
        headers={"Content-Range": "3-5"},
    )
    assert await env.offset(location) == "0-2"


@pytest.mark.parametrize("sent", [b"de", b"defghij", b"d" * (1024 * 1024 + 10)])
async def test_streamed_chunk_not_matching_content_range_is_not_appended(
    env: Env, sent: bytes
) -> None:
    """No Content-Length (chunked transfer): the body's real length disagrees with the range.
    The chunk is refused and the session stays where it was, so the client can resend it."""
    location = await _session_at_3(env)

    async def stream() -> AsyncIterator[bytes]:
        for i in range(0, len(sent), 64 * 1024):
            yield sent[i : i + 64 * 1024]

    await env.expect(
        "PATCH",
        location,
        400,
        "SIZE_INVALID",
        content=stream(),
        headers={"Content-Range": "3-5"},
    )
    assert await env.offset(location) == "0-2"
    r = await env.client.patch(location, content=b"def", headers={"Content-Range": "3-5"})
    assert r.status_code == 202, r.text
    assert r.headers["Range"] == "0-5"
    r = await env.client.put(location, params={"digest": sha256(b"abcdef")})
    assert r.status_code == 201, r.text


async def test_put_with_wrong_digest_stores_nothing(env: Env) -> None:
    data = b"some blob content that will not match"
    wrong = sha256(data + b"!")
    location = await env.session()
    r = await env.client.patch(location, content=data)
    assert r.status_code == 202
    await env.expect("PUT", location, 400, "DIGEST_INVALID", params={"digest": wrong})
    await env.expect("HEAD", f"/v2/{REPO}/blobs/{wrong}", 404, None)
    await env.expect("HEAD", f"/v2/{REPO}/blobs/{sha256(data)}", 404, None)
    await env.expect("GET", location, 404, "BLOB_UPLOAD_UNKNOWN")
    assert not await env.stored(wrong.split(":")[1])
    assert not await env.stored(sha256(data).split(":")[1])


async def test_put_with_wrong_digest_and_final_chunk(env: Env) -> None:
    location = await env.session()
    wrong = sha256(b"other")
    await env.expect(
        "PUT",
        location,
        400,
        "DIGEST_INVALID",
        params={"digest": wrong},
        content=b"final chunk",
        headers={"Content-Range": "0-10"},
    )
    await env.expect("HEAD", f"/v2/{REPO}/blobs/{sha256(b'final chunk')}", 404, None)
    assert not await env.stored(hashlib.sha256(b"final chunk").hexdigest())


async def test_monolithic_post_with_wrong_digest(env: Env) -> None:
    data = b"monolithic"
    for wrong in (sha256(b"nope"), "sha512:" + hashlib.sha512(b"nope").hexdigest()):
        await env.expect(
            "POST",
            f"/v2/{REPO}/blobs/uploads/",
            400,
            "DIGEST_INVALID",
            params={"digest": wrong},
            content=data,
        )
    assert not await env.stored(hashlib.sha256(data).hexdigest())
    assert not await env.stored(hashlib.sha512(data).hexdigest())


async def test_sha512_mismatch(env: Env) -> None:
    data = b"sha512 content"
    location = await env.session()
    r = await env.client.patch(location, content=data)
    assert r.status_code == 202
    wrong = "sha512:" + hashlib.sha512(data + b"x").hexdigest()
    await env.expect("PUT", location, 400, "DIGEST_INVALID", params={"digest": wrong})
    # The right sha256 for the same bytes does not rescue a wrong sha512: the session is gone.
    await env.expect("PUT", location, 404, "BLOB_UPLOAD_UNKNOWN", params={"digest": sha256(data)})
    assert not await env.stored(hashlib.sha512(data).hexdigest())


async def test_put_without_digest(env: Env) -> None:
    location = await env.session()
    await env.expect("PUT", location, 400, "DIGEST_INVALID", content=b"x")
    await env.expect("PUT", location, 400, "DIGEST_INVALID", params={"digest": ""})


# --- mounts ----------------------------------------------------------------------------------


async def test_mount_from_repository_without_the_blob(env: Env) -> None:
    """The source lacks the blob: no mount, a normal upload session (202) instead."""
    data = b"in OTHER only"
    digest = await push_blob(env.client, OTHER, data)
    r = await env.expect(
        "POST",
        f"/v2/{REPO}-mirror/blobs/uploads/",
        202,
        None,
        params={"mount": digest, "from": REPO},
    )
    assert re.fullmatch(rf"/v2/{REPO}-mirror/blobs/uploads/[0-9a-f-]{{36}}", r.headers["Location"])
    assert r.headers["Range"] == "0-0"
    await env.expect("HEAD", f"/v2/{REPO}-mirror/blobs/{digest}", 404, None)
    # A digest nobody has, with or without a source.
    for params in ({"mount": UNKNOWN, "from": REPO}, {"mount": UNKNOWN}):
        await env.expect("POST", f"/v2/{OTHER}/blobs/uploads/", 202, None, params=params)
    # The session the failed mount opened is a real one.
    r = await env.client.put(r.headers["Location"], params={"digest": sha256(data)}, content=data)
    assert r.status_code == 201, r.text


async def test_mount_with_bad_digest(env: Env) -> None:
    for digest in ("sha256:abc", "../../etc", ""):
        await env.expect(
            "POST",
            f"/v2/{OTHER}/blobs/uploads/",
            400,
            "DIGEST_INVALID",
            params={"mount": digest, "from": REPO},
        )


# --- blob ranges -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    ["bytes=190-", "bytes=1000-2000", "bytes=5-2", "bytes=-0", "bytes=99999999999999999999-"],
)
async def test_unsatisfiable_blob_range(env: Env, header: str) -> None:
    assert len(env.layer) == 190
    r = await env.expect(
        "GET",
        f"/v2/{REPO}/blobs/{env.layer_digest}",
        416,
        "RANGE_INVALID",
        headers={"Range": header},
    )
    assert r.headers["Content-Range"] == "bytes */190"


async def test_range_on_empty_blob_is_unsatisfiable(env: Env) -> None:
    digest = await push_blob(env.client, REPO, b"")
    for header in ("bytes=-5", "bytes=0-", "bytes=0-0"):
        r = await env.expect(
            "GET", f"/v2/{REPO}/blobs/{digest}", 416, "RANGE_INVALID", headers={"Range": header}
        )
        assert r.headers["Content-Range"] == "bytes */0"


@pytest.mark.parametrize(
    "header",
    [
        "bytes=0-1,5-9",  # several (overlapping or not): served whole, not as multipart
        "bytes=0-5,3-8",
        "items=0-5",
        "bytes=abc",
        "bytes=²-",
        "bytes=0-³",
        "bytes=-¹",
        "bytes=\u0660-\u0663",
        "bytes=" + "1" * 70 + "-",
    ],
)
async def test_unusable_range_is_ignored(env: Env, header: str) -> None:
    r = await env.expect(
        "GET",
        f"/v2/{REPO}/blobs/{env.layer_digest}",
        200,
        None,
        headers={"Range": header.encode("utf-8")},
    )
    assert r.content == env.layer
    assert "Content-Range" not in r.headers


async def test_unknown_blob(env: Env) -> None:
    await env.expect("GET", f"/v2/{REPO}/blobs/{UNKNOWN}", 404, "BLOB_UNKNOWN")
    await env.expect("DELETE", f"/v2/{REPO}/blobs/{UNKNOWN}", 404, "BLOB_UNKNOWN")
    await env.expect("GET", f"/v2/{OTHER}/blobs/{env.layer_digest}", 404, "BLOB_UNKNOWN")
    await env.expect("DELETE", f"/v2/{OTHER}/blobs/{env.layer_digest}", 404, "BLOB_UNKNOWN")


# --- pagination ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n",
    [
        "-1",
        "abc",
        "1.5",
        " 1",
        "1 ",
        "0x10",
        "1e3",
        "99999999999999999999",
        "²",
        "\u0661",
        "+1",
        "",
    ],
)
async def test_bad_pagination(env: Env, n: str) -> None:
    for url in ("/v2/_catalog", f"/v2/{REPO}/tags/list"):
        await env.expect("GET", url, 400, "PAGINATION_NUMBER_INVALID", params={"n": n})


async def test_large_page_is_clamped(env: Env) -> None:
    r = await env.expect("GET", f"/v2/{REPO}/tags/list", 200, None, params={"n": "100000000"})
    assert r.json()["tags"] == ["latest"]
    r = await env.expect(
        "GET", "/v2/_catalog", 200, None, params={"n": "1", "last": "../../" + "\x00" * 3}
    )
    assert r.json()["repositories"] == [REPO]


# --- referrers -------------------------------------------------------------------------------


async def test_referrers_with_bad_digest(env: Env) -> None:
    for digest in BAD_DIGESTS:
        await env.expect("GET", f"/v2/{REPO}/referrers/{digest}", 400, "DIGEST_INVALID")


async def test_referrers_of_manifest_with_unpaired_surrogates(env: Env) -> None:
    """JSON may escape lone surrogates (``\\ud800``); listing such a referrer must not crash."""
    subject = {"mediaType": OCI_MANIFEST, "digest": env.image, "size": 1}
    m = manifest(env, subject=subject, annotations={"note": "\ud800"}, artifactType="a/\udfff")
    body = json.dumps(m).encode()  # ensure_ascii: the surrogates travel as \ud800 escapes
    r = await env.client.put(
        f"/v2/{REPO}/manifests/{sha256(body)}", content=body, headers={"Content-Type": OCI_MANIFEST}
    )
    if r.status_code == 400:  # refusing such a manifest would be fine too
        assert_envelope(r, "MANIFEST_INVALID")
        return
    assert r.status_code == 201, r.text
    r = await env.expect("GET", f"/v2/{REPO}/referrers/{env.image}", 200, None)
    [referrer] = r.json()["manifests"]
    assert referrer["annotations"] == {"note": "\ud800"}
    assert referrer["artifactType"] == "a/\udfff"


async def test_tags_of_a_namespace_is_name_unknown(env: Env) -> None:
    """``hostile`` is only a path prefix of ``hostile/app``, not a repository (the catalog
    agrees)."""
    for name in ("hostile", "nothing/here"):
        await env.expect("GET", f"/v2/{name}/tags/list", 404, "NAME_UNKNOWN")
    await push_blob(env.client, f"{REPO}-blobs-only", b"a blob, no manifest yet")
    r = await env.expect("GET", f"/v2/{REPO}-blobs-only/tags/list", 200, None)
    assert r.json()["tags"] == []
    r = await env.expect("GET", "/v2/_catalog", 200, None)
    assert r.json()["repositories"] == [REPO]


async def test_concurrent_chunks_for_the_same_range(env: Env) -> None:
    """Two clients (or a retrying one) send the chunk for the same range at once: one must be
    refused (416), or the session holds both chunks while each was told it holds one."""
    location = await env.session()
    n = 2 * 1024 * 1024

    async def body(fill: bytes) -> AsyncIterator[bytes]:
        for _ in range(4):
            await asyncio.sleep(0.01)
            yield fill * (n // 4)

    responses = await asyncio.gather(
        *(
            env.client.patch(location, content=body(f), headers={"Content-Range": f"0-{n - 1}"})
            for f in (b"a", b"b")
        )
    )
    assert sorted(r.status_code for r in responses) == [202, 416]
    assert await env.offset(location) == f"0-{n - 1}"
