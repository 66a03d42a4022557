"""One HTTP POST of one event to one endpoint: body format, headers, signature, TLS."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import aiohttp
from multidict import CIMultiDict

from .. import __version__
from ..config import NotificationEndpointSettings
from .formats import FORMATS
from .model import Event
from .signing import HEADER, sign


class DeliveryFailed(Exception):
    """The receiver did not accept the event (unreachable, timeout, or not a 2xx)."""


class Sender:
    def __init__(self, endpoint: NotificationEndpointSettings) -> None:
        self.endpoint = endpoint
        self._format = FORMATS[endpoint.format]
        self._session: aiohttp.ClientSession | None = None

    def _secret(self) -> bytes | None:
        # Files are read at each attempt (a few bytes), so a rotated Secret applies at once.
        e = self.endpoint
        if e.secret_file is not None:
            return e.secret_file.read_bytes().strip()
        if e.secret_env is not None:
            value = os.environ.get(e.secret_env, "")
            return value.encode() if value else None
        return None

    def _headers(self, content_type: str, body: bytes) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        for name, values in self.endpoint.headers.items():
            for value in values:
                headers.add(name, value)
        for name, path in self.endpoint.header_files.items():
            headers[name] = Path(path).read_text().strip()
        headers["Content-Type"] = content_type
        headers["User-Agent"] = f"berth/{__version__}"
        secret = self._secret()
        if secret:
            headers[HEADER] = sign(secret, body)
        return headers

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            context: ssl.SSLContext | bool = True
            if self.endpoint.ca_file is not None:
                context = ssl.create_default_context(cafile=str(self.endpoint.ca_file))
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context, limit=4),
                timeout=aiohttp.ClientTimeout(total=self.endpoint.timeout_seconds),
                # Never the environment's proxies or netrc: the URL configured is the receiver.
                trust_env=False,
            )
        return self._session

    async def send(self, event: Event) -> None:
        body, content_type = self._format(event)
        try:
            headers = self._headers(content_type, body)
        except OSError as exc:
            raise DeliveryFailed(f"cannot read a secret or header file: {exc}") from None
        try:
            # No redirects: a receiver cannot send the signed body elsewhere. The response
            # body is never read (a hostile receiver cannot make us buffer anything).
            async with self._open().post(
                self.endpoint.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                if not 200 <= response.status < 300:
                    raise DeliveryFailed(f"HTTP {response.status}")
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            # ValueError: a header file's value that is no header value (a newline in it).
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}"[:300]) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


__all__ = ["DeliveryFailed", "Sender"]
