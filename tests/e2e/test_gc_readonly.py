"""Read-only mode toggled on a running `berth serve` without a restart: by editing its --config
file (polled) and by SIGHUP. Writes get 405 UNSUPPORTED while reads go on."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from .conftest import BerthFactory, push_blob

pytestmark = pytest.mark.e2e


def _config_path(factory: BerthFactory, port: int) -> Path:
    return factory.workdir / f"berth-{port}.yaml"


def _set_read_only(path: Path, value: bool) -> None:
    settings = json.loads(path.read_text())
    settings.setdefault("storage", {})["read_only"] = value
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(settings))
    os.replace(tmp, path)


def _wait_status(c: httpx.Client, repo: str, want: int, timeout: float = 10) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        r = c.post(f"/v2/{repo}/blobs/uploads/")
        if r.status_code == want or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


@pytest.mark.parametrize("trigger", ["poll", "sighup"])
def test_read_only_toggles_without_restart(
    berth_factory: BerthFactory, repo: str, trigger: str
) -> None:
    period = 0.2 if trigger == "poll" else 0  # 0: only SIGHUP reloads
    server = berth_factory.start(config={"maintenance": {"config_reload_seconds": period}})
    try:
        path = _config_path(berth_factory, server.port)
        with server.client() as c:
            digest = push_blob(c, repo, b"written before read-only")
            _set_read_only(path, True)
            if trigger == "sighup":
                os.kill(server.proc.pid, signal.SIGHUP)
            r = _wait_status(c, repo, 405)
            assert r.status_code == 405, r.text
            error = r.json()["errors"][0]
            assert error["code"] == "UNSUPPORTED" and "read-only" in error["message"]
            r = c.put(f"/v2/{repo}/manifests/v1", content=b"{}")
            assert r.status_code == 405
            assert c.delete(f"/v2/{repo}/blobs/{digest}").status_code == 405
            r = c.get(f"/v2/{repo}/blobs/{digest}", follow_redirects=True)
            assert r.status_code == 200 and r.content == b"written before read-only"
            _set_read_only(path, False)
            if trigger == "sighup":
                os.kill(server.proc.pid, signal.SIGHUP)
            r = _wait_status(c, repo, 202)
            assert r.status_code == 202, r.text
            assert server.proc.poll() is None  # SIGHUP did not stop the server
    finally:
        server.stop()
