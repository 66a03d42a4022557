"""A lean S3 client for the hot path: GetObject, HeadObject, PutObject and DeleteObject of
small objects (links, manifests, upload state), signed with SigV4 here and sent with aiohttp.

botocore spends about 1-3 ms of CPU per request (serialisation, the event system, response
parsing); a manifest GET or blob HEAD is a single such request, so that overhead is most of the
registry's own cost. This client signs (a few HMACs, signing keys cached per day) and sends the
request itself, with the same credentials (botocore's chain, refreshed as botocore does), the
same retries (exponential backoff with jitter for throttling, 5xx, timeouts and resets) and the
same errors. Everything else (multipart, listing, copies, presigning) stays on botocore.

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import aiohttp
from yarl import URL

from ...config import S3Settings
from ..driver import PathNotFound, StorageUnavailable
from .errors import RETRY_STATUSES, classify

UNSIGNED = "UNSIGNED-PAYLOAD"
# Error codes that come with a 4xx status but are transient.
_RETRY_CODES = (b"<Code>RequestTimeout</Code>", b"<Code>RequestTimeTooSkewed</Code>")


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


class FastS3:
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
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Reply:
        """One request with retries; 404 raises PathNotFound, an unreachable store
        StorageUnavailable; other statuses are returned. ``full_key`` None: the bucket."""
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
        last = ""
        for attempt in range(self._max_attempts):
            if attempt:
                await asyncio.sleep(random.random() * min(20.0, 2.0**attempt))
            signed = {k.lower(): v for k, v in (headers or {}).items()}
            self._sign(method, path, query, signed, await self._credentials())
            if body is not None:
                signed["content-length"] = str(len(body))
            try:
                async with self._session.request(method, url, data=body, headers=signed) as r:
                    data = b"" if method == "HEAD" else await r.read()
                    if r.status == 404:
                        raise PathNotFound(key)
                    if r.status in RETRY_STATUSES or (
                        r.status in (400, 403) and any(c in data for c in _RETRY_CODES)
                    ):
                        last = f"HTTP {r.status}"
                        continue
                    return Reply(r.status, r.headers, data)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
        raise StorageUnavailable(f"object store: {last} after {self._max_attempts} attempts")

    async def list_page(
        self, prefix: str, delimiter: bool, token: str | None = None, max_keys: int = 1000
    ) -> dict[str, Any]:
        """One ListObjectsV2 page, shaped like botocore's answer (the fields the driver uses)."""
        params = {"list-type": "2", "prefix": prefix, "max-keys": str(max_keys)}
        if delimiter:
            params["delimiter"] = "/"
        if token:
            params["continuation-token"] = token
        r = await self.request("GET", None, prefix, params=params)
        _check(r, prefix)
        root = ElementTree.fromstring(r.body)
        ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        contents = [
            {
                "Key": c.findtext(f"{ns}Key", ""),
                "Size": int(c.findtext(f"{ns}Size", "0")),
                "LastModified": datetime.fromisoformat(c.findtext(f"{ns}LastModified", "")),
            }
            for c in root.iter(f"{ns}Contents")
        ]
        prefixes = [
            {"Prefix": c.findtext(f"{ns}Prefix", "")} for c in root.iter(f"{ns}CommonPrefixes")
        ]
        page: dict[str, Any] = {
            "Contents": contents,
            "CommonPrefixes": prefixes,
            "KeyCount": len(contents) + len(prefixes),
            "IsTruncated": root.findtext(f"{ns}IsTruncated", "false") == "true",
        }
        next_token = root.findtext(f"{ns}NextContinuationToken")
        if next_token:
            page["NextContinuationToken"] = next_token
        return page

    async def copy(self, src_full: str, dst_full: str, key: str) -> Reply:
        """CopyObject; the reply is returned for the caller to inspect (>5 GiB: 400)."""
        source = f"/{self._bucket}/{quote(src_full, safe='/~')}"
        headers = {"x-amz-copy-source": source, **self._put_headers}
        r = await self.request("PUT", dst_full, key, b"", headers)
        if r.status == 200 and b"<Error>" in r.body:  # S3 may fail a copy after the 200
            raise StorageUnavailable(f"object store: copy of {key} failed")
        return r

    async def delete_many(self, full_keys: list[str]) -> list[str]:
        """DeleteObjects (at most 1000, in order); the error codes of the keys that failed."""
        body = (
            "<Delete><Quiet>true</Quiet>"
            + "".join(f"<Object><Key>{escape(k)}</Key></Object>" for k in full_keys)
            + "</Delete>"
        ).encode()
        headers = {
            "content-type": "application/xml",
            "content-md5": base64.b64encode(hashlib.md5(body).digest()).decode(),
        }
        r = await self.request("POST", None, full_keys[0], body, headers, {"delete": ""})
        _check(r, full_keys[0])
        root = ElementTree.fromstring(r.body)
        ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        return [e.findtext(f"{ns}Code", "") for e in root.iter(f"{ns}Error")]

    async def get(self, full_key: str, key: str) -> bytes:
        r = await self.request("GET", full_key, key)
        _check(r, key)
        return r.body

    async def get_etag(self, full_key: str, key: str) -> tuple[bytes, str]:
        r = await self.request("GET", full_key, key)
        _check(r, key)
        return r.body, str(r.headers.get("ETag", ""))

    async def head(self, full_key: str, key: str) -> Reply:
        r = await self.request("HEAD", full_key, key)
        _check(r, key)
        return r

    async def put(
        self, full_key: str, key: str, data: bytes, condition: dict[str, str] | None = None
    ) -> str:
        """PutObject; ``condition``: If-Match / If-None-Match (412 raises WriterBusy)."""
        headers = {"content-type": "application/octet-stream", **self._put_headers}
        headers.update(condition or {})
        r = await self.request("PUT", full_key, key, data, headers)
        _check(r, key)  # 412 (a condition failed): WriterBusy
        return str(r.headers.get("ETag", ""))

    async def delete(self, full_key: str, key: str) -> None:
        _check(await self.request("DELETE", full_key, key), key)


def _check(r: Reply, key: str) -> None:
    """Raise the driver error for a failed answer (after the retries ``request`` made)."""
    if r.status < 300:
        return
    code = message = ""
    if r.body.lstrip().startswith(b"<"):
        try:
            root = ElementTree.fromstring(r.body)
            code, message = root.findtext("Code", ""), root.findtext("Message", "")
        except ElementTree.ParseError:
            pass
    raise classify(r.status, code, key, message[:200])
