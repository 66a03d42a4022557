"""The HTTP client of one upstream registry (aiohttp): authentication, redirects, timeouts, and
every failure mapped to a typed registry error (502 unusable, 503 unavailable, 504 timeout)."""

from __future__ import annotations

import base64
import json
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp

from ..config import UpstreamSettings
from ..registry import mediatypes as mt
from ..registry.digest import Digest
from ..registry.errors import (
    DigestInvalid,
    RegistryError,
    UpstreamInvalid,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .metrics import UPSTREAM_ERRORS
from .upstream_auth import Challenge, TokenCache, parse_challenge, token_from_answer

log = logging.getLogger("berth.proxy")

MAX_REDIRECTS = 5
MANIFEST_ACCEPT = ", ".join(sorted(mt.MANIFESTS))
MAX_JSON_BYTES = 4 * 1024 * 1024  # tag lists and referrer indexes
REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    body: bytes
    content_type: str | None
    digest: Digest | None  # the upstream's Docker-Content-Digest, when it sent a valid one


class UpstreamClient:
    def __init__(self, settings: UpstreamSettings, max_manifest_bytes: int) -> None:
        self.settings = settings
        self.name = settings.name
        self.max_manifest_bytes = max_manifest_bytes
        password = settings.password()
        self._basic: str | None = None
        if settings.username is not None:
            raw = f"{settings.username}:{password or ''}".encode()
            self._basic = "Basic " + base64.b64encode(raw).decode()
        self._scheme: str | None = None  # learned from the first challenge
        self._probed = False
        self._challenge: Challenge | None = None
        self._tokens = TokenCache()
        self._session: aiohttp.ClientSession | None = None

    # -- plumbing -------------------------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext | bool:
        if self.settings.insecure:
            return False
        if self.settings.ca_file is not None:
            return ssl.create_default_context(cafile=str(self.settings.ca_file))
        return True

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(
                total=None,
                connect=self.settings.connect_timeout_seconds,
                sock_read=self.settings.read_timeout_seconds,
            )
            self._session = aiohttp.ClientSession(
                timeout=timeout,
                connector=aiohttp.TCPConnector(ssl=self._ssl(), limit=64),
                # Blobs are hashed as sent: never let a Content-Encoding change the bytes.
                auto_decompress=False,
                trust_env=False,  # only the configured egress proxy
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def fail(self, reason: str, error: RegistryError) -> RegistryError:
        UPSTREAM_ERRORS.labels(self.name, reason).inc()
        log.warning("upstream %s: %s", self.name, error.message)
        return error

    def transport_error(self, exc: BaseException, what: str) -> RegistryError:
        if isinstance(exc, TimeoutError):
            return self.fail("timeout", UpstreamTimeout(f"upstream {self.name}: {what} timed out"))
        if isinstance(exc, aiohttp.ClientPayloadError):
            return self.fail(
                "invalid", UpstreamInvalid(f"upstream {self.name}: {what}: truncated body")
            )
        return self.fail(
            "unavailable",
            UpstreamUnavailable(
                f"upstream {self.name} is unavailable: {what}: {type(exc).__name__}",
                headers={"Retry-After": "10"},
            ),
        )

    def check_status(self, response: aiohttp.ClientResponse, what: str) -> None:
        """Raise the registry error for a failed answer (404 is the caller's to handle)."""
        status = response.status
        if 200 <= status < 300:
            return
        if status == 429:
            retry = response.headers.get("Retry-After", "30")
            raise self.fail(
                "throttled",
                UpstreamUnavailable(
                    f"upstream {self.name} is rate-limiting: {what}",
                    headers={"Retry-After": retry if retry.isdigit() else "30"},
                ),
            )
        if status >= 500:
            raise self.fail(
                "unavailable",
                UpstreamUnavailable(
                    f"upstream {self.name} failed with {status}: {what}",
                    headers={"Retry-After": "10"},
                ),
            )
        if status in (401, 403):
            raise self.fail(
                "refused",
                UpstreamInvalid(f"upstream {self.name} refused access ({status}): {what}"),
            )
        raise self.fail(
            "invalid", UpstreamInvalid(f"upstream {self.name} answered {status}: {what}")
        )

    # -- one exchange, with authentication and redirects ----------------------------------------

    async def _credentials(self, scope: str) -> str | None:
        """What to send before being asked: once the upstream's scheme is known (from
        ``/v2/``, asked once, as Docker does), Basic or a token for the scope, so a request
        costs one upstream exchange, not a 401 and a retry."""
        if not self._probed:
            async with self.exchange("GET", "/v2/", "", probe=True) as response:
                challenge = parse_challenge(response.headers.get("WWW-Authenticate"))
                if response.status == 401 and challenge is not None:
                    self._scheme, self._challenge = challenge.scheme, challenge
            self._probed = True
        if self._scheme == "bearer" and self._challenge is not None:
            token = self._tokens.get(scope) or await self._token(self._challenge, scope)
            return f"Bearer {token}"
        if self._scheme == "basic":
            return self._basic
        return None

    async def _token(self, challenge: Challenge, scope: str) -> str:
        realm = challenge.realm
        if not realm or urlsplit(realm).scheme not in ("http", "https"):
            raise self.fail(
                "refused", UpstreamInvalid(f"upstream {self.name}: bearer challenge has no realm")
            )
        params = {"scope": scope}
        if "service" in challenge.params:
            params["service"] = challenge.params["service"]
        headers = {"Authorization": self._basic} if self._basic else {}
        what = "token request"
        try:
            async with self._open_session().get(
                realm, params=params, headers=headers, proxy=self.settings.egress_proxy
            ) as response:
                self.check_status(response, what)
                token, expires = token_from_answer(await response.json(content_type=None))
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self.transport_error(exc, what) from None
        except ValueError as exc:
            raise self.fail("refused", UpstreamInvalid(f"upstream {self.name}: {exc}")) from None
        self._tokens.put(scope, token, expires)
        return token

    async def _send(self, method: str, url: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
        return await self._open_session().request(
            method,
            url,
            headers=headers,
            allow_redirects=False,
            proxy=self.settings.egress_proxy,
        )

    @asynccontextmanager
    async def exchange(
        self,
        method: str,
        path: str,
        remote: str,
        headers: dict[str, str] | None = None,
        *,
        probe: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The upstream's final answer to ``method path`` (authenticated, redirects followed).

        Transport failures become typed errors here; the status is the caller's to check.
        """
        scope = f"repository:{remote}:pull"
        base = dict(headers or {})
        url = f"{self.settings.url}{path}"
        response: aiohttp.ClientResponse | None = None
        try:
            try:
                auth = None if probe else await self._credentials(scope)
                response = await self._send(
                    method, url, {**base, **({"Authorization": auth} if auth else {})}
                )
                if response.status == 401 and not probe:
                    challenge = parse_challenge(response.headers.get("WWW-Authenticate"))
                    retry = await self._answer(challenge, scope)
                    if retry is not None:
                        auth = retry
                        response.release()
                        response = await self._send(method, url, {**base, "Authorization": auth})
                # Redirects (blob storage, CDNs): credentials only go back to the same origin.
                origin = urlsplit(url)[:2]
                for _ in range(MAX_REDIRECTS):
                    if response.status not in REDIRECTS or "Location" not in response.headers:
                        break
                    target = urljoin(str(response.url), response.headers["Location"])
                    response.release()
                    same = urlsplit(target)[:2] == origin
                    hop = {**base, **({"Authorization": auth} if same and auth else {})}
                    response = await self._send(method, target, hop)
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise self.transport_error(exc, f"{method} {path}") from None
            yield response
        finally:
            if response is not None:
                response.release()

    async def _answer(self, challenge: Challenge | None, scope: str) -> str | None:
        """Credentials answering a 401's challenge; None when we have nothing to offer."""
        if challenge is None:
            return None
        if challenge.scheme == "bearer":
            self._scheme, self._challenge = "bearer", challenge
            return f"Bearer {await self._token(challenge, scope)}"
        if challenge.scheme == "basic" and self._basic is not None:
            self._scheme = "basic"
            return self._basic
        return None

    # -- the registry API -----------------------------------------------------------------------

    async def _read_limited(self, response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
        declared = response.content_length
        if declared is not None and declared > limit:
            raise self.fail("invalid", UpstreamInvalid(f"upstream {self.name}: {what} too large"))
        body = bytearray()
        try:
            async for chunk in response.content.iter_chunked(65536):
                body += chunk
                if len(body) > limit:
                    raise self.fail(
                        "invalid", UpstreamInvalid(f"upstream {self.name}: {what} too large")
                    )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self.transport_error(exc, what) from None
        return bytes(body)

    @staticmethod
    def _digest_header(response: aiohttp.ClientResponse) -> Digest | None:
        value = response.headers.get("Docker-Content-Digest")
        if not value:
            return None
        try:
            return Digest.parse(value.strip())
        except DigestInvalid:
            return None

    async def manifest_digest(self, remote: str, reference: str) -> Digest | None:
        """HEAD a manifest: its digest, or None when the upstream does not say (or has none:
        a 404 is left to the GET that follows, which says it for certain)."""
        what = f"manifest {remote}:{reference}"
        path = f"/v2/{remote}/manifests/{reference}"
        async with self.exchange("HEAD", path, remote, {"Accept": MANIFEST_ACCEPT}) as response:
            if response.status == 404:
                return None
            self.check_status(response, what)
            return self._digest_header(response)

    async def manifest(self, remote: str, reference: str) -> FetchedManifest | None:
        """GET a manifest (None: the upstream has no such manifest)."""
        what = f"manifest {remote}:{reference}"
        path = f"/v2/{remote}/manifests/{reference}"
        async with self.exchange("GET", path, remote, {"Accept": MANIFEST_ACCEPT}) as response:
            if response.status == 404:
                return None
            self.check_status(response, what)
            body = await self._read_limited(response, self.max_manifest_bytes, what)
            content_type = response.headers.get("Content-Type")
            return FetchedManifest(body, content_type, self._digest_header(response))

    async def blob_size(self, remote: str, digest: Digest) -> int | None:
        """HEAD a blob: its size, or None when the upstream answers 404."""
        what = f"blob {remote}@{digest}"
        async with self.exchange("HEAD", f"/v2/{remote}/blobs/{digest}", remote) as response:
            if response.status == 404:
                return None
            self.check_status(response, what)
            if response.content_length is None:
                raise self.fail(
                    "invalid", UpstreamInvalid(f"upstream {self.name}: {what} has no size")
                )
            return response.content_length

    @asynccontextmanager
    async def blob(
        self, remote: str, digest: Digest
    ) -> AsyncIterator[aiohttp.ClientResponse | None]:
        """GET a blob: the answer whose body is to be read, or None on 404."""
        async with self.exchange("GET", f"/v2/{remote}/blobs/{digest}", remote) as response:
            if response.status == 404:
                yield None
                return
            self.check_status(response, f"blob {remote}@{digest}")
            yield response

    async def json(self, path: str, remote: str, what: str) -> tuple[object, str | None] | None:
        """GET a JSON document (tag list, referrers): (document, Link header), None on 404."""
        async with self.exchange("GET", path, remote, {"Accept": "application/json"}) as response:
            if response.status == 404:
                return None
            self.check_status(response, what)
            body = await self._read_limited(response, MAX_JSON_BYTES, what)
            link = response.headers.get("Link")
        try:
            return json.loads(body), link
        except ValueError:
            raise self.fail(
                "invalid", UpstreamInvalid(f"upstream {self.name}: {what} is not JSON")
            ) from None


__all__ = ["FetchedManifest", "UpstreamClient"]
