"""A lean S3 transport for the hot path: GetObject, HeadObject, PutObject, DeleteObject(s),
ListObjectsV2 and CopyObject of small objects (links, manifests, upload state) and presigned
URLs, signed with SigV4 here and sent with aiohttp (``transport.S3Transport``).

botocore spends about 1-3 ms of CPU per request (serialisation, the event system, response
parsing); a manifest GET or blob HEAD is a single such request, so that overhead is most of the
registry's own cost. This client signs (a few HMACs, signing keys cached per day) and sends the
request itself, with the same credentials (botocore's chain, refreshed as botocore does), the
same retries (exponential backoff with jitter for throttling, 5xx, timeouts and resets) and the
same errors (``errors.classify``). It also runs multipart uploads (create, parts, complete,
abort), streaming a part's body as it arrives; ranged reads, multipart copies and the listing
of multipart uploads stay on botocore, whose client is created only when first needed.

Only path-style addressing against a configured endpoint uses it (``storage.s3.fast_path``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import random
import ssl
import time
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import aiohttp
from yarl import URL

from ...config import S3Settings
from ..driver import PathNotFound, StorageUnavailable
from .errors import classify, is_transient
from .transport import CopyTooLarge, DeleteFailure, Entry, Head, ListPage, S3Transport

UNSIGNED = "UNSIGNED-PAYLOAD"


@dataclass(frozen=True, slots=True)
class Frozen:
    access_key: str
    secret_key: str
    token: str | None


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Any  # CIMultiDictProxy
    body: bytes


class FastS3(S3Transport):
    name = "lean"

    def __init__(
        self,
        settings: S3Settings,
        credentials: Callable[[], Awaitable[Frozen]],
        extra_put_headers: dict[str, str],
    ) -> None:
        assert settings.endpoint_url
        endpoint = urlsplit(settings.endpoint_url)
        self._scheme = endpoint.scheme
        self._host = endpoint.netloc  # as sent in Host (port included when not the default)
        if (endpoint.scheme, endpoint.port) in (("http", 80), ("https", 443)):
            self._host = endpoint.hostname or self._host
        self._base_path = endpoint.path.rstrip("/") + "/" + quote(settings.bucket, safe="")
        self._region = settings.region
        self._bucket = settings.bucket
        public = urlsplit(settings.public_endpoint_url or settings.endpoint_url)
        public_host = public.netloc
        if (public.scheme, public.port) in (("http", 80), ("https", 443)):
            public_host = public.hostname or public_host
        self._public = (
            public.scheme,
            public_host,
            public.path.rstrip("/") + "/" + quote(settings.bucket, safe=""),
        )
        self._credentials = credentials
        self._put_headers = {k.lower(): v for k, v in extra_put_headers.items()}
        self._max_attempts = settings.max_attempts
        self._keys: dict[tuple[str, str], bytes] = {}
        ssl_arg: ssl.SSLContext | bool = False
        if endpoint.scheme == "https":
            if not settings.verify_tls:
                ssl_arg = False
            else:
                cafile = settings.ca_bundle or os.environ.get("AWS_CA_BUNDLE") or None
                ssl_arg = ssl.create_default_context(cafile=cafile)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=settings.max_pool_connections, ssl=ssl_arg, keepalive_timeout=30
            ),
            timeout=aiohttp.ClientTimeout(
                sock_connect=settings.connect_timeout, sock_read=settings.read_timeout
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Content-Type", "Accept", "Accept-Encoding"),
        )

    async def close(self) -> None:
        await self._session.close()

    def _signing_key(self, secret: str, date: str) -> bytes:
        cached = self._keys.get((secret, date))
        if cached is None:
            k = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
            for part in (self._region, "s3", "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            self._keys = {(secret, date): k}  # one day at a time
            cached = k
        return cached

    def _sign(
        self, method: str, path: str, query: str, headers: dict[str, str], creds: Frozen
    ) -> None:
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        date = amz_date[:8]
        headers["host"] = self._host
        headers["x-amz-content-sha256"] = UNSIGNED
        headers["x-amz-date"] = amz_date
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        names = sorted(headers)
        signed = ";".join(names)
        canonical = "".join(f"{n}:{headers[n].strip()}\n" for n in names)
        request = f"{method}\n{path}\n{query}\n{canonical}\n{signed}\n{UNSIGNED}"
        scope = f"{date}/{self._region}/s3/aws4_request"
        signature = self._signature(creds, amz_date, scope, request)
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        )

    async def presign(self, full_key: str, expires_in: int) -> str:
        """A SigV4 query-signed GET URL for the public endpoint (no network)."""
        creds = await self._credentials()
        scheme, host, base = self._public
        path = f"{base}/{quote(full_key, safe='/~')}"
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        date = amz_date[:8]
        scope = f"{date}/{self._region}/s3/aws4_request"
        params = {
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Credential": f"{creds.access_key}/{scope}",
            "X-Amz-Date": amz_date,
            "X-Amz-Expires": str(expires_in),
            "X-Amz-SignedHeaders": "host",
        }
        if creds.token:
            params["X-Amz-Security-Token"] = creds.token
        query = "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items())
        )
        request = f"GET\n{path}\n{query}\nhost:{host}\n\nhost\n{UNSIGNED}"
        signature = self._signature(creds, amz_date, scope, request)
        return f"{scheme}://{host}{path}?{query}&X-Amz-Signature={signature}"

    def _signature(self, creds: Frozen, amz_date: str, scope: str, canonical_request: str) -> str:
        """SigV4: sign the string-to-sign of a canonical request with the day's signing key."""
        digest = hashlib.sha256(canonical_request.encode()).hexdigest()
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{digest}"
        key = self._signing_key(creds.secret_key, amz_date[:8])
        return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()

    async def request(
        self,
        method: str,
        full_key: str | None,
        key: str,
        body: bytes | bytearray | AsyncIterable[bytes | memoryview] | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Reply:
        """One request with retries; 404 raises PathNotFound, an unreachable store
        StorageUnavailable; other statuses are returned. ``full_key`` None: the bucket.

        A body of chunks is sent as they come, once (it cannot be sent again); its
        Content-Length is the caller's header."""
        path = self._base_path
        if full_key is not None:
            path = f"{path}/{quote(full_key, safe='/~')}"
        query = "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
            for k, v in sorted((params or {}).items())
        )
        url = URL(
            f"{self._scheme}://{self._host}{path}" + (f"?{query}" if query else ""), encoded=True
        )
        whole = body is None or isinstance(body, bytes | bytearray)
        attempts = self._max_attempts if whole else 1
        last = ""
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(random.random() * min(20.0, 2.0**attempt))
            signed = {k.lower(): v for k, v in (headers or {}).items()}
            if isinstance(body, bytes | bytearray) and body:  # signed, as botocore signs it
                signed["content-length"] = str(len(body))
            self._sign(method, path, query, signed, await self._credentials())
            if body is not None and whole and not body:
                signed["content-length"] = "0"
            try:
                async with self._session.request(method, url, data=body, headers=signed) as r:
                    data = b"" if method == "HEAD" else await r.read()
                    if r.status == 404:
                        raise PathNotFound(key)
                    if r.status >= 400 and is_transient(r.status, _error(data)[0]):
                        last = f"HTTP {r.status}"
                        continue
                    return Reply(r.status, r.headers, data)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
        raise StorageUnavailable(f"object store: {last} after {attempts} attempts")

    async def create_upload(self, full: str, key: str) -> str:
        headers = {"content-type": "application/octet-stream", **self._put_headers}
        r = await self.request("POST", full, key, b"", headers, {"uploads": ""})
        _check(r, key)
        upload_id = _text(r.body, "UploadId")
        if not upload_id:
            raise classify(500, "InternalError", key, "CreateMultipartUpload gave no UploadId")
        return upload_id

    async def upload_part(
        self,
        full: str,
        key: str,
        upload_id: str,
        number: int,
        length: int,
        body: bytes | bytearray | AsyncIterable[bytes | memoryview],
    ) -> str:
        """A bytes-like body is one request with retries; chunks are streamed as they come
        (UNSIGNED-PAYLOAD, a fixed Content-Length), so a part is never held whole in memory."""
        params = {"partNumber": str(number), "uploadId": upload_id}
        streamed = None if isinstance(body, bytes | bytearray) else {"content-length": str(length)}
        r = await self.request("PUT", full, key, body, streamed, params)  # never copied
        _check(r, key)
        return str(r.headers.get("ETag", ""))

    async def complete_upload(self, full: str, key: str, upload_id: str, etags: list[str]) -> None:
        body = (
            "<CompleteMultipartUpload>"
            + "".join(
                f"<Part><PartNumber>{i + 1}</PartNumber><ETag>{escape(e)}</ETag></Part>"
                for i, e in enumerate(etags)
            )
            + "</CompleteMultipartUpload>"
        ).encode()
        headers = {"content-type": "application/xml"}
        r = await self.request("POST", full, key, body, headers, {"uploadId": upload_id})
        _check(r, key)
        if b"<Error>" in r.body:  # S3 may fail a completion after the 200
            code, message = _error(r.body)
            raise classify(500, code, key, message)

    async def abort_upload(self, full: str, key: str, upload_id: str) -> None:
        _check(await self.request("DELETE", full, key, params={"uploadId": upload_id}), key)

    async def ping(self) -> None:
        _check(await self.request("HEAD", None, ""), "")

    async def list_page(
        self, prefix: str, delimiter: bool, token: str | None = None, max_keys: int = 1000
    ) -> ListPage:
        params = {"list-type": "2", "prefix": prefix, "max-keys": str(max_keys)}
        if delimiter:
            params["delimiter"] = "/"
        if token:
            params["continuation-token"] = token
        r = await self.request("GET", None, prefix, params=params)
        _check(r, prefix)
        root = ElementTree.fromstring(r.body)
        ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        objects = [
            Entry(
                c.findtext(f"{ns}Key", ""),
                int(c.findtext(f"{ns}Size", "0")),
                datetime.fromisoformat(c.findtext(f"{ns}LastModified", "")).timestamp(),
            )
            for c in root.iter(f"{ns}Contents")
        ]
        prefixes = [c.findtext(f"{ns}Prefix", "") for c in root.iter(f"{ns}CommonPrefixes")]
        more = root.findtext(f"{ns}IsTruncated", "false") == "true"
        return ListPage(
            objects, prefixes, root.findtext(f"{ns}NextContinuationToken") if more else None
        )

    async def copy(self, src_full: str, dst_full: str, key: str) -> None:
        source = f"/{self._bucket}/{quote(src_full, safe='/~')}"
        headers = {"x-amz-copy-source": source, **self._put_headers}
        r = await self.request("PUT", dst_full, key, b"", headers)
        if r.status == 400 and _error(r.body)[0] in ("InvalidRequest", "EntityTooLarge"):
            raise CopyTooLarge(key)  # over 5 GiB: the caller copies part by part
        _check(r, key)
        if b"<Error>" in r.body:  # S3 may fail a copy after the 200
            code, message = _error(r.body)
            raise classify(500, code, key, message)

    async def delete_many(self, fulls: list[str]) -> list[DeleteFailure]:
        body = (
            "<Delete><Quiet>true</Quiet>"
            + "".join(f"<Object><Key>{escape(k)}</Key></Object>" for k in fulls)
            + "</Delete>"
        ).encode()
        headers = {
            "content-type": "application/xml",
            "content-md5": base64.b64encode(hashlib.md5(body).digest()).decode(),
        }
        r = await self.request("POST", None, fulls[0], body, headers, {"delete": ""})
        _check(r, fulls[0])
        root = ElementTree.fromstring(r.body)
        ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        return [
            DeleteFailure(
                e.findtext(f"{ns}Key", ""),
                e.findtext(f"{ns}Code", ""),
                e.findtext(f"{ns}Message", ""),
            )
            for e in root.iter(f"{ns}Error")
        ]

    async def get(self, full: str, key: str) -> tuple[bytes, str]:
        r = await self.request("GET", full, key)
        _check(r, key)
        return r.body, str(r.headers.get("ETag", ""))

    async def head(self, full: str, key: str) -> Head:
        r = await self.request("HEAD", full, key)
        _check(r, key)
        modified = parsedate_to_datetime(r.headers["Last-Modified"]).timestamp()
        return Head(int(r.headers["Content-Length"]), modified)

    async def put(
        self,
        full: str,
        key: str,
        data: bytes,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        headers = {"content-type": "application/octet-stream", **self._put_headers}
        if if_match:
            headers["if-match"] = if_match
        elif if_none_match:
            headers["if-none-match"] = "*"
        r = await self.request("PUT", full, key, data, headers)
        _check(r, key)  # 412 (a condition failed): WriterBusy
        return str(r.headers.get("ETag", ""))

    async def delete(self, full: str, key: str) -> None:
        _check(await self.request("DELETE", full, key), key)


def _error(body: bytes) -> tuple[str, str]:
    """The S3 error code and message of an answer's XML body ("" when it has none)."""
    if b"<Code>" not in body:
        return "", ""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return "", ""
    error = root if root.tag == "Error" else root.find(".//Error")
    if error is None:
        return "", ""
    return error.findtext("Code", ""), error.findtext("Message", "")


def _text(body: bytes, tag: str) -> str:
    """The text of the first ``tag`` element of an XML answer, in any namespace ("" if none)."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return ""
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    return root.findtext(f".//{ns}{tag}") or ""


def _check(r: Reply, key: str) -> None:
    """Raise the driver error for a failed answer (after the retries ``request`` made)."""
    if r.status < 300:
        return
    code, message = _error(r.body)
    raise classify(r.status, code, key, message[:200])
