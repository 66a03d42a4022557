"""`berth serve` as a process: one scrape of the metrics port covers every uvicorn worker, and
SIGTERM lets an upload in flight finish (issue 11, points 8 and 9)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import free_port, require_tool


@contextlib.contextmanager
def berth_serve(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    log = (tmp_path / f"berth-{port}.log").open("wb")
    cmd = [require_tool("berth"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--storage-root", str(tmp_path / "data"), *args]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / f"berth-{port}.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "berth serve did not become ready"
            time.sleep(0.1)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def test_one_scrape_covers_every_worker(tmp_path: Path) -> None:
    metrics_port = free_port()
    with berth_serve(tmp_path, "--workers", "2", "--metrics-port", str(metrics_port)) as (_, port):
        # Not on the public port any more.
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 404
        requests = 60
        for _ in range(requests):  # a new connection each: the kernel spreads them
            assert httpx.get(f"http://127.0.0.1:{port}/v2/").status_code == 200
        deadline = time.monotonic() + 20
        while True:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
            found = samples(text)
            workers = [v for n, _, v in found if n == "berth_metrics_workers"]
            instances = {
                labels["service_instance_id"] for n, labels, _ in found if n == "target_info"
            }
            if workers == [2] and len(instances) == 2:
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
        served = sum(
            v
            for n, labels, v in found
            if n == "http_server_request_duration_seconds_count"
            and labels.get("http_route") == "/v2/"
        )
        assert served == requests  # every worker's count, summed in one scrape
        assert httpx.get(f"http://127.0.0.1:{metrics_port}/v2/").status_code == 404


def test_sigterm_lets_an_upload_in_flight_finish(tmp_path: Path) -> None:
    with berth_serve(tmp_path, "--shutdown-timeout", "20") as (proc, port):
        start = httpx.post(f"http://127.0.0.1:{port}/v2/lifecycle/blobs/uploads/")
        assert start.status_code == 202
        location = start.headers["Location"]
        chunk = os.urandom(64 * 1024)
        chunks = 20
        digest = hashlib.sha256(chunk * chunks).hexdigest()
        path = f"{location}{'&' if '?' in location else '?'}digest=sha256:{digest}"
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/octet-stream\r\n"
                f"Content-Length: {len(chunk) * chunks}\r\n\r\n".encode()
            )
            for i in range(chunks):
                sock.sendall(chunk)
                if i == 2:
                    proc.send_signal(signal.SIGTERM)  # the rollout replaces this pod now
                time.sleep(0.1)
            answer = sock.recv(65536).decode(errors="replace")
        assert answer.startswith("HTTP/1.1 201"), answer
        # Then it exits by itself (uvicorn re-raises the SIGTERM it handled: status -15).
        assert proc.wait(20) in (0, -signal.SIGTERM)
    # The blob is there: a fresh server on the same storage serves it.
    with berth_serve(tmp_path) as (_, port):
        head = httpx.head(f"http://127.0.0.1:{port}/v2/lifecycle/blobs/sha256:{digest}")
        assert head.status_code == 200


@pytest.mark.parametrize("workers", ["1"])
def test_metrics_port_with_one_worker(tmp_path: Path, workers: str) -> None:
    metrics_port = free_port()
    with berth_serve(tmp_path, "--workers", workers, "--metrics-port", str(metrics_port)) as (
        _,
        port,
    ):
        httpx.get(f"http://127.0.0.1:{port}/healthz/storage")
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert "berth_storage_up 1.0" in text
