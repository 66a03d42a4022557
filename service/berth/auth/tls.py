"""TLS termination in ``berth serve``, with the certificate and key re-read when they change.

uvicorn builds the server SSLContext once; ``context_factory`` (its ``ssl_context_factory``
hook) returns a context whose SNI callback runs at every TLS handshake (OpenSSL calls it with
or without SNI). At most every ``reload_check_seconds`` it looks at the files' mtimes and, when
they changed, switches that and later connections to a freshly loaded context. A half-written
pair (cert and key not matching yet) is ignored until the next check.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("berth.tls")
RELOAD_CHECK_ENV = "BERTH_INTERNAL_TLS_RELOAD_SECONDS"


class ReloadingContext:
    def __init__(self, cert_file: str | Path, key_file: str | Path, check_seconds: float) -> None:
        self.cert_file = str(cert_file)
        self.key_file = str(key_file)
        self.check_seconds = check_seconds
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._signature = self._stat()
        self.current = self._build()
        self.context = self.current  # the one uvicorn holds; its callback swaps per connection

    def _stat(self) -> tuple[int, int]:
        return (os.stat(self.cert_file).st_mtime_ns, os.stat(self.key_file).st_mtime_ns)

    def _build(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        ctx.set_alpn_protocols(["http/1.1"])
        ctx.sni_callback = self._on_hello
        return ctx

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.check_seconds:
            return
        with self._lock:
            if now - self._checked < self.check_seconds:
                return
            self._checked = now
            try:
                signature = self._stat()
                if signature == self._signature:
                    return
                self.current = self._build()
                self._signature = signature
                log.info("TLS certificate reloaded", extra={"fields": {"file": self.cert_file}})
            except (OSError, ssl.SSLError) as exc:
                log.warning("TLS certificate not reloaded: %s", exc)

    def _on_hello(self, sock: Any, server_name: str | None, ctx: ssl.SSLContext) -> None:
        self._maybe_reload()
        if self.current is not ctx:
            sock.context = self.current


def context_factory(config: Any, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """uvicorn ``ssl_context_factory``: module level, so worker processes can import it."""
    check = float(os.environ.get(RELOAD_CHECK_ENV, "10"))
    return ReloadingContext(config.ssl_certfile, config.ssl_keyfile, check).context


def uvicorn_options(cert_file: Path | None, key_file: Path | None, check: float) -> dict[str, Any]:
    """Extra ``uvicorn.run`` arguments for TLS (empty without a certificate)."""
    if cert_file is None and key_file is None:
        return {}
    if cert_file is None or key_file is None:
        raise ValueError("TLS needs both http.tls.cert_file and http.tls.key_file")
    for path in (cert_file, key_file):
        if not Path(path).is_file():
            raise FileNotFoundError(f"TLS file not found: {path}")
    os.environ[RELOAD_CHECK_ENV] = str(check)
    return {
        "ssl_certfile": str(cert_file),
        "ssl_keyfile": str(key_file),
        "ssl_context_factory": context_factory,
    }


__all__ = ["ReloadingContext", "context_factory", "uvicorn_options"]
