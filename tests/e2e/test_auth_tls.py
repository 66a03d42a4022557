"""``berth serve`` terminating TLS itself: certificate and key files, reloaded when they change
(a cert-manager renewal or a Secret update), with authentication on top."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import httpx
from cryptography import x509

from berth.auth.htpasswd import set_user
from tls_certs import write_cert

from .conftest import BerthFactory


def _served_serial(port: int) -> int:
    pem = ssl.get_server_certificate(("127.0.0.1", port))
    return x509.load_pem_x509_certificate(pem.encode()).serial_number


def test_tls_with_reload_and_basic_auth(tmp_path: Path, berth_factory: BerthFactory) -> None:
    cert_file, key_file = write_cert(tmp_path, serial=1001)
    htpasswd = tmp_path / "htpasswd"
    set_user(htpasswd, "alice", "alice-tls-pw", cost=4)
    server = berth_factory.start(
        config={"http": {"tls": {"reload_check_seconds": 0.2}}},
        args=[
            "--tls-cert",
            str(cert_file),
            "--tls-key",
            str(key_file),
            "--auth",
            "htpasswd",
            "--htpasswd-file",
            str(htpasswd),
        ],
        scheme="https",
    )
    try:
        assert server.url.startswith("https://")
        with httpx.Client(verify=ssl.create_default_context(cafile=cert_file), timeout=10) as c:
            r = c.get(f"{server.url}/v2/")
            assert r.status_code == 401
            assert r.headers["WWW-Authenticate"] == 'Basic realm="berth"'
            assert c.get(f"{server.url}/v2/", auth=("alice", "alice-tls-pw")).status_code == 200
        # Plain HTTP on the TLS port gets nowhere.
        try:
            plain = httpx.get(f"http://{server.host}/v2/", timeout=5)
            assert plain.status_code >= 400
        except httpx.HTTPError:
            pass
        assert _served_serial(server.port) == 1001

        new_cert, _ = write_cert(tmp_path, serial=2002)
        deadline = time.monotonic() + 15
        while _served_serial(server.port) != 2002:
            assert time.monotonic() < deadline, "the new certificate was not picked up"
            time.sleep(0.3)
        with httpx.Client(verify=ssl.create_default_context(cafile=new_cert), timeout=10) as c:
            assert c.get(f"{server.url}/v2/", auth=("alice", "alice-tls-pw")).status_code == 200
    finally:
        server.stop()
