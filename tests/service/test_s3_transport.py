"""The S3 transport interface (berth/storage/s3/transport.py) and its two implementations: the
lean client (``fastpath.FastS3``) and botocore (``botocore_transport.BotocoreTransport``).

* Signing parity, with time frozen: both transports send the same request for the same
  operation (Authorization byte for byte), and botocore's own signer (``botocore.auth``) signs
  every request the lean client sends, query and body requests included, to the same value.
* Error mapping on both, against SeaweedFS through ``FaultProxy``: throttling and 5xx are
  retried then StorageUnavailable, RequestTimeTooSkewed is transient, AccessDenied is a
  StorageRefused, a failed condition WriterBusy, 404 PathNotFound; and the registry's answers.
"""

from __future__ import annotations

import datetime
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qsl, quote, urlsplit

import botocore.auth
import pytest
from aiohttp import web
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from berth.config import S3Settings
from berth.storage.driver import PathNotFound, StorageRefused, StorageUnavailable, WriterBusy
from berth.storage.s3 import S3Driver, fastpath

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import s3_servers
from s3_servers import error_body

from .conftest import s3_app_client

TRANSPORTS = {"lean": True, "botocore": False}
REGION = "eu-west-1"
INSTANT = datetime.datetime(2024, 5, 6, 7, 8, 9)  # naive UTC, as botocore's clock returns it
ACCESS, SECRET, TOKEN = "AKIDBERTHTEST", "berth/secret+key=0123456789", "FwoGZXIvYXdz//token=="


# -- signing parity ------------------------------------------------------------------------------


class Recorder:
    """An S3 stand-in on 127.0.0.1 that records every request and answers it plausibly."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.runner: web.AppRunner | None = None
        self.endpoint = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append((request.method, request.raw_path, headers))
        headers = {"ETag": '"etag"', "Last-Modified": "Mon, 06 May 2024 07:08:09 GMT"}
        xml = "application/xml"
        if request.method == "POST" and "uploads" in request.query:
            body = b"<InitiateMultipartUploadResult><UploadId>u+1/=</UploadId>"
            return web.Response(body=body + b"</InitiateMultipartUploadResult>", content_type=xml)
        if request.method == "POST":
            return web.Response(body=b"<DeleteResult></DeleteResult>", content_type=xml)
        if request.method == "GET" and "list-type" in request.query:
            body = b"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>"
            return web.Response(body=body, content_type=xml)
        if request.method == "DELETE":
            return web.Response(status=204)
        if request.method == "PUT":
            if "x-amz-copy-source" in request.headers:
                body = b"<CopyObjectResult><ETag>&quot;e&quot;</ETag></CopyObjectResult>"
                return web.Response(body=body, content_type=xml)
            return web.Response(headers=headers)
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": "3"})
        return web.Response(body=b"abc", headers=headers)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.endpoint = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"  # type: ignore[attr-defined]

    def take(self) -> tuple[str, str, dict[str, str]]:
        (one,) = self.requests
        self.requests.clear()
        return one


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    r = Recorder()
    await r.start()
    yield r
    assert r.runner is not None
    await r.runner.cleanup()


@pytest.fixture
def frozen_time() -> Iterator[None]:
    """One instant for both signers: fastpath reads time.gmtime, botocore get_current_datetime."""
    with (
        mock.patch.object(fastpath.time, "gmtime", lambda *_: INSTANT.timetuple()),
        mock.patch.object(botocore.auth, "get_current_datetime", lambda *_, **__: INSTANT),
    ):
        yield


@pytest.fixture(params=["keys", "session-token"])
def credentials(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Credentials:
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    token = TOKEN if request.param == "session-token" else None
    if token:
        monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    else:
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return Credentials(ACCESS, SECRET, token)


async def _pair(endpoint: str, **overrides: Any) -> tuple[S3Driver, S3Driver]:
    """A lean and a botocore driver, configured alike (credentials from the environment)."""
    drivers = []
    for transport, fast in TRANSPORTS.items():
        settings: dict[str, Any] = {
            "bucket": "berth",
            "region": REGION,
            "endpoint_url": endpoint,
            "path_style": True,
            "fast_path": fast,
            "max_attempts": 1,
            "storage_class": "STANDARD_IA",
            "sse": "AES256",
        }
        settings.update(overrides)
        d = S3Driver(S3Settings(**settings))
        await d.start()
        assert d.transport.name == transport
        drivers.append(d)
    return drivers[0], drivers[1]


SIGNED_BY_SIGNER = ("x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "host")


def _botocore_sign(
    config: Any,
    creds: Credentials,
    method: str,
    url: str,
    headers: dict[str, str],
    signed: list[str],
) -> str:
    """The Authorization botocore's S3 SigV4 signer computes for a request, with the driver
    client's config (``payload_signing_enabled`` off: UNSIGNED-PAYLOAD) and region."""
    request = AWSRequest(
        method=method,
        url=url,
        headers={k: v for k, v in headers.items() if k.lower() in signed},
    )
    for name in SIGNED_BY_SIGNER:
        if name in request.headers:
            del request.headers[name]
    request.context["client_config"] = config
    botocore.auth.S3SigV4Auth(creds, "s3", REGION).add_auth(request)
    return str(request.headers["authorization"])


def _signed_headers(authorization: str) -> list[str]:
    return authorization.split("SignedHeaders=", 1)[1].split(",", 1)[0].split(";")


async def test_both_transports_send_the_same_signed_requests(
    recorder: Recorder, frozen_time: None, credentials: Credentials
) -> None:
    """GET, HEAD, PUT with headers (conditions, storage class, SSE), DELETE and a DELETE with a
    query: the requests of both transports carry the same Authorization, byte for byte."""
    lean, boto = await _pair(recorder.endpoint)
    key = "docker/registry/v2/a b+c~d=e/ünï/link"
    try:
        operations: list[tuple[str, Any]] = [
            ("GET", lambda d: d.get(key)),
            ("HEAD", lambda d: d.stat(key)),
            ("PUT", lambda d: d.put(key, b"payload")),
            ("PUT", lambda d: d.put_full(d.full_key(key), b"xyz", key, if_match='"e1"')),
            ("PUT", lambda d: d.put_full(d.full_key(key), b"xyz", key, if_none_match=True)),
            ("DELETE", lambda d: d.transport.delete(d.full_key(key), key)),
        ]
        for method, operation in operations:
            await operation(lean)
            lean_method, lean_path, lean_headers = recorder.take()
            await operation(boto)
            boto_method, boto_path, boto_headers = recorder.take()
            assert lean_method == boto_method == method
            assert lean_path == boto_path
            auth = lean_headers["authorization"]
            assert auth == boto_headers["authorization"], (method, lean_headers, boto_headers)
            assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS}/20240506/{REGION}/s3/")
            for name in _signed_headers(auth):  # the signed values, as sent
                assert lean_headers[name] == boto_headers[name], name
            if credentials.token:
                assert "x-amz-security-token" in _signed_headers(auth)

        # DELETE with a query: AbortMultipartUpload (the writer's, on the aiobotocore client).
        upload_id = "2~Ab/c+d=="
        assert isinstance(lean.transport, fastpath.FastS3)
        await lean.transport.request(
            "DELETE", lean.full_key(key), key, params={"uploadId": upload_id}
        )
        lean_request = recorder.take()
        await boto.client.abort_multipart_upload(
            Bucket="berth", Key=boto.full_key(key), UploadId=upload_id
        )
        boto_request = recorder.take()
        assert lean_request[1] == boto_request[1]
        assert lean_request[2]["authorization"] == boto_request[2]["authorization"]
    finally:
        await lean.close()
        await boto.close()


async def test_botocore_signer_agrees_with_every_lean_request(
    recorder: Recorder, frozen_time: None, credentials: Credentials
) -> None:
    """Requests whose shape differs between the transports (ListObjectsV2 query, DeleteObjects
    body with Content-MD5, CopyObject, the multipart upload's, HeadBucket): botocore's signer
    signs the lean request alike."""
    lean, boto = await _pair(recorder.endpoint)
    try:
        d = lean
        t = d.transport
        await t.list_page("some dir/with space/", True, "next/token+=")
        await d.delete_full([d.full_key("a/b"), d.full_key("a/"), d.full_key("k&<>'\"")])
        await d.move("src/x y", "dst/z")  # CopyObject, then DeleteObject
        await d.get("plain/key")
        await d.put("p/q", b"body")
        full = d.full_key("up/lo ad")
        upload_id = await t.create_upload(full, "up/lo ad")
        assert upload_id == "u+1/="
        await t.upload_part(full, "up/lo ad", upload_id, 1, 4, bytearray(b"part"))

        async def chunks() -> AsyncIterator[bytes]:
            yield b"stre"
            yield b"amed"

        await t.upload_part(full, "up/lo ad", upload_id, 2, 8, chunks())
        await t.complete_upload(full, "up/lo ad", upload_id, ['"e1"', '"e2"'])
        await t.abort_upload(full, "up/lo ad", upload_id)
        await t.ping()
        assert len(recorder.requests) == 12
        for method, raw_path, headers in recorder.requests:
            auth = headers["authorization"]
            url = f"{recorder.endpoint}{raw_path}"
            config = boto.client.meta.config  # as the driver configures its client
            signed = _signed_headers(auth)
            expected = _botocore_sign(config, credentials, method, url, headers, signed)
            assert auth == expected, (method, raw_path)
    finally:
        await lean.close()
        await boto.close()


@pytest.mark.parametrize("public", [False, True])
async def test_presigned_urls_match(
    recorder: Recorder, frozen_time: None, credentials: Credentials, public: bool
) -> None:
    overrides = {"public_endpoint_url": "https://objects.example.net"} if public else {}
    lean, boto = await _pair(recorder.endpoint, **overrides)
    try:
        for key, expires in (("blobs/sha256/ab/abcdef/data", 1200), ("a b/ü+~=", 60)):
            lean_url = await lean.redirect_url(key, expires)
            boto_url = await boto.redirect_url(key, expires)
            assert lean_url is not None and boto_url is not None
            ours, theirs = urlsplit(lean_url), urlsplit(boto_url)
            assert (ours.scheme, ours.netloc, ours.path) == (
                theirs.scheme,
                theirs.netloc,
                theirs.path,
            )
            # botocore orders X-Amz-Security-Token last; the parameters are the same bytes.
            assert sorted(ours.query.split("&")) == sorted(theirs.query.split("&"))
            if not credentials.token:
                assert lean_url == boto_url
            # And botocore's query signer, given the same instant, signs it alike.
            base = f"{ours.scheme}://{ours.netloc}{ours.path}"
            request = AWSRequest(method="GET", url=base)
            botocore.auth.S3SigV4QueryAuth(credentials, "s3", REGION, expires=expires).add_auth(
                request
            )
            assert dict(parse_qsl(urlsplit(request.url).query)) == dict(parse_qsl(ours.query))
            assert ours.path.endswith("/berth/" + quote(key, safe="/~"))
            if public:
                assert ours.netloc == "objects.example.net"
            assert not recorder.requests  # signing needs no network
    finally:
        await lean.close()
        await boto.close()


# -- error mapping, against SeaweedFS through the fault proxy -------------------------------------


def _settings(server: s3_servers.S3Server, **overrides: Any) -> S3Settings:
    base: dict[str, Any] = {"root_directory": f"t-{uuid.uuid4().hex[:12]}", "part_size": 5 << 20}
    base.update(overrides)
    return S3Settings(**server.settings(**base))


ATTEMPTS = 2


@pytest.fixture(params=list(TRANSPORTS))
async def faulty(
    request: pytest.FixtureRequest,
    seaweedfs_server: s3_servers.S3Server,
    proxy: s3_servers.FaultProxy,
    no_ca_bundle: None,
) -> AsyncIterator[S3Driver]:
    settings = _settings(
        seaweedfs_server,
        endpoint_url=proxy.endpoint,
        max_attempts=ATTEMPTS,
        fast_path=TRANSPORTS[request.param],
    )
    d = S3Driver(settings)
    await d.start()
    assert d.transport.name == request.param
    await d.put("e/present", b"here")  # through the proxy, before any fault
    proxy.seen.clear()
    yield d
    await d.close()


OPERATIONS: dict[str, Any] = {
    "get": lambda d: d.get("e/present"),
    "stat": lambda d: d.stat("e/present"),
    "put": lambda d: d.put("e/new", b"x"),
    "list": lambda d: d.list("e"),
    "delete": lambda d: d.delete("e/present"),  # one DeleteObjects (object + directory entry)
    "move": lambda d: d.move("e/present", "e/moved"),  # CopyObject first
}


def _always(proxy: s3_servers.FaultProxy, status: int, code: str) -> None:
    body = error_body(code)
    proxy.rule = lambda method, target: ("status", status, body)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (429, "TooManyRequests"),
        (503, "SlowDown"),
        (500, "InternalError"),
        (403, "RequestTimeTooSkewed"),
    ],
)
@pytest.mark.parametrize("operation", ["get", "put", "list", "delete"])
async def test_transient_answers_are_retried_then_unavailable(
    faulty: S3Driver, proxy: s3_servers.FaultProxy, status: int, code: str, operation: str
) -> None:
    _always(proxy, status, code)
    with pytest.raises(StorageUnavailable):
        await OPERATIONS[operation](faulty)
    assert len(proxy.seen) == ATTEMPTS, proxy.seen  # every attempt, no more
    proxy.clear()
    proxy.seen.clear()
    proxy.plan(("status", status, error_body(code)))  # once: the retry succeeds
    await OPERATIONS[operation](faulty)
    assert len(proxy.seen) == 2


@pytest.mark.parametrize("operation", list(OPERATIONS))
async def test_access_denied_is_refused_at_once(
    faulty: S3Driver, proxy: s3_servers.FaultProxy, operation: str
) -> None:
    _always(proxy, 403, "AccessDenied")
    with pytest.raises(StorageRefused):
        await OPERATIONS[operation](faulty)
    assert len(proxy.seen) == 1  # not retried


async def test_failed_condition_is_writer_busy(
    faulty: S3Driver, proxy: s3_servers.FaultProxy
) -> None:
    full = faulty.full_key("e/present")
    with pytest.raises(WriterBusy):  # the store's own 412 (SeaweedFS enforces If-Match)
        await faulty.put_full(full, b"y", "e/present", if_match='"0123456789abcdef"')
    with pytest.raises(WriterBusy):
        await faulty.put_full(full, b"y", "e/present", if_none_match=True)
    assert await faulty.get("e/present") == b"here"
    proxy.seen.clear()
    proxy.plan(("status", 412, error_body("PreconditionFailed")))
    with pytest.raises(WriterBusy):
        await faulty.put_full(full, b"y", "e/present", if_none_match=True)
    assert len(proxy.seen) == 1


@pytest.mark.parametrize("operation", ["get", "stat", "move"])
async def test_not_found(faulty: S3Driver, proxy: s3_servers.FaultProxy, operation: str) -> None:
    await faulty.delete("e/present")
    with pytest.raises(PathNotFound):  # the store's own 404
        await OPERATIONS[operation](faulty)
    await faulty.put("e/present", b"here")
    proxy.seen.clear()
    proxy.plan(("status", 404, error_body("NoSuchKey")))
    with pytest.raises(PathNotFound) as caught:
        await OPERATIONS[operation](faulty)
    assert caught.value.key == "e/present"
    assert len(proxy.seen) == 1


async def test_unreachable_store_is_unavailable(
    faulty: S3Driver, proxy: s3_servers.FaultProxy
) -> None:
    proxy.rule = lambda method, target: "reset"
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailable):
        await faulty.get("e/present")
    assert time.monotonic() - t0 < 30
    # Every attempt; aiohttp itself may resend an idempotent request once on a reset.
    assert ATTEMPTS <= len(proxy.seen) <= 2 * ATTEMPTS


# -- what the registry answers -------------------------------------------------------------------


@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_registry_answers_refused_500_and_unavailable_503(
    seaweedfs_server: s3_servers.S3Server,
    proxy: s3_servers.FaultProxy,
    no_ca_bundle: None,
    transport: str,
) -> None:
    s3 = _settings(
        seaweedfs_server,
        endpoint_url=proxy.endpoint,
        max_attempts=ATTEMPTS,
        fast_path=TRANSPORTS[transport],
    )
    async with s3_app_client(s3) as c:
        _always(proxy, 403, "AccessDenied")
        r = await c.get("/v2/some/repo/manifests/latest")
        assert r.status_code == 500, r.text
        error = r.json()["errors"][0]
        assert error["code"] == "UNKNOWN"
        assert "AccessDenied" not in r.text  # the cause is logged, not sent to the client
        r = await c.head("/v2/some/repo/manifests/latest")
        assert r.status_code == 500 and not r.content
        _always(proxy, 429, "TooManyRequests")
        r = await c.get("/v2/some/repo/manifests/latest")
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"]
        assert r.json()["errors"][0]["code"] == "UNAVAILABLE"
        _always(proxy, 403, "RequestTimeTooSkewed")
        r = await c.get("/v2/some/repo/tags/list")
        assert r.status_code == 503, r.text
        proxy.clear()
        r = await c.get("/v2/some/repo/manifests/latest")
        assert r.status_code == 404
