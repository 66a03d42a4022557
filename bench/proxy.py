"""Pull-through cache: Berth against CNCF Distribution 2.8.2 and 3.1.1 in proxy mode
(``proxy.remoteurl``), all in front of the same upstream, on the filesystem driver.

    .venv/bin/python bench/proxy.py [--layers 5] [--layer-mib 10] [--clients 20]

The upstream is Debian's Distribution 2.8.2 holding one image of ``--layers`` random layers
(50 MiB by default), reached by each cache through its own counting proxy
(tests/s3_servers.FaultProxy), which counts the bytes the upstream sent. Per cache, on fresh
storage: a cold pull (one client), a warm pull (the same again), then, on another fresh
storage, ``--clients`` concurrent cold pulls. A pull is what containerd does: the manifest, then
config and layers three at a time, every blob read to the end and its digest checked. Results:
stdout and bench/proxy-results.md (ratios: Distribution / Berth, > 1 means Berth ahead).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402
    VENV_BIN,
    Proc,
    distribution_version,
    free_port,
    push_monolithic,
    wait_ready,
)

import s3_servers  # noqa: E402

MiB = 1024 * 1024
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DIST_3 = REPO.parent / "shared" / "bin" / "distribution-3.1.1"
IMAGE = "library/bench"


def _distribution(binary: str, workdir: Path, root: Path, proxy: str | None) -> Proc:
    port = free_port()
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(root)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": "bench-secret"},
    }
    if distribution_version(binary).startswith("3."):
        config["storage"]["cache"] = {"blobdescriptor": "inmemory"}  # type: ignore[index]
    if proxy is not None:
        config["proxy"] = {"remoteurl": proxy}
    path = workdir / f"distribution-{port}.yml"
    path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env["OTEL_TRACES_EXPORTER"] = "none"
    log = (workdir / f"distribution-{port}.log").open("wb")
    proc = subprocess.Popen(
        [binary, "serve", str(path)], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    p = Proc(f"distribution {distribution_version(binary)}", proc, port)
    wait_ready(p)
    return p


def _berth(workdir: Path, root: Path, proxy: str) -> Proc:
    port = free_port()
    path = workdir / f"berth-{port}.yaml"
    path.write_text(
        json.dumps(
            {
                "http": {"host": "127.0.0.1", "port": port, "workers": 1},
                "storage": {"filesystem": {"root": str(root)}},
                "observability": {"access_log": False, "log_level": "warning"},
                "proxy": {"upstreams": [{"name": "up", "url": proxy}]},
            }
        )
    )
    log = (workdir / f"berth-{port}.log").open("wb")
    proc = subprocess.Popen(
        [str(VENV_BIN / "berth"), "serve", "--config", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    p = Proc("berth", proc, port)
    wait_ready(p)
    return p


async def fill_upstream(url: str, layers: int, layer_mib: int) -> None:
    async with aiohttp.ClientSession() as s:
        descriptors = []
        for _ in range(layers):
            data = os.urandom(layer_mib * MiB)
            descriptors.append(
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": await push_monolithic(s, url, IMAGE, data),
                    "size": len(data),
                }
            )
        config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MT_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": await push_monolithic(s, url, IMAGE, config),
                    "size": len(config),
                },
                "layers": descriptors,
            }
        ).encode()
        headers = {"Content-Type": MT_MANIFEST}
        async with s.put(f"{url}/v2/{IMAGE}/manifests/v1", data=body, headers=headers) as r:
            assert r.status == 201, await r.text()


async def pull(s: aiohttp.ClientSession, base: str) -> None:
    """One containerd-like pull: manifest, then blobs three at a time, each verified."""
    async with s.get(f"{base}/manifests/v1", headers={"Accept": MT_MANIFEST}) as r:
        assert r.status == 200, (r.status, await r.text())
        manifest = json.loads(await r.read())
    limit = asyncio.Semaphore(3)

    async def blob(digest: str) -> None:
        async with limit, s.get(f"{base}/blobs/{digest}") as r:
            assert r.status == 200, (r.status, await r.text())
            h = hashlib.sha256()
            async for chunk in r.content.iter_chunked(MiB):
                h.update(chunk)
            assert "sha256:" + h.hexdigest() == digest, digest

    digests = [manifest["config"]["digest"], *(d["digest"] for d in manifest["layers"])]
    await asyncio.gather(*(blob(d) for d in digests))


async def timed_pulls(base: str, clients: int) -> float:
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        start = time.perf_counter()
        await asyncio.gather(*(pull(s, base) for _ in range(clients)))
        return time.perf_counter() - start


@dataclass
class Result:
    name: str
    cold: float
    warm: float
    cold_bytes: int
    concurrent: float
    concurrent_bytes: int


def run_one(name: str, starter: str, upstream_url: str, workdir: Path, clients: int) -> Result:
    """Cold, warm, then concurrent cold pulls through one cache kind."""
    numbers: list[float] = []
    upstream_bytes: list[int] = []
    for phase in ("single", "concurrent"):
        counter = s3_servers.FaultProxy(upstream_url)
        root = Path(tempfile.mkdtemp(prefix=f"{phase}-", dir=workdir))
        if starter == "berth":
            server = _berth(workdir, root, counter.endpoint)
            base = f"{server.url}/v2/up/{IMAGE}"
        else:
            server = _distribution(starter, workdir, root, counter.endpoint)
            base = f"{server.url}/v2/{IMAGE}"
        try:
            if phase == "single":
                numbers.append(asyncio.run(timed_pulls(base, 1)))
                upstream_bytes.append(counter.bytes_down)
                numbers.append(asyncio.run(timed_pulls(base, 1)))
            else:
                numbers.append(asyncio.run(timed_pulls(base, clients)))
                upstream_bytes.append(counter.bytes_down)
        finally:
            server.stop()
            counter.stop()
            shutil.rmtree(root, ignore_errors=True)
    return Result(name, numbers[0], numbers[1], upstream_bytes[0], numbers[2], upstream_bytes[1])


def table(results: list[Result], image_mib: int, clients: int) -> str:
    berth = results[0]
    lines = [
        f"Image: {image_mib} MiB; {clients} concurrent cold pulls; filesystem storage; "
        "upstream: Distribution 2.8.2 on loopback. Ratios: other / Berth (> 1: Berth ahead).",
        "",
        "| cache | cold pull s | warm pull s | upstream MiB (cold) | "
        f"{clients} cold pulls s | upstream MiB ({clients} cold) |",
        "|---|---|---|---|---|---|",
    ]

    def cell(value: float, ours: float, row: Result, fmt: str) -> str:
        text = fmt.format(value)
        return text if row is berth or not ours else f"{text} ({value / ours:.2f}x)"

    for r in results:
        cells = [
            cell(r.cold, berth.cold, r, "{:.2f}"),
            cell(r.warm, berth.warm, r, "{:.2f}"),
            cell(r.cold_bytes / MiB, berth.cold_bytes / MiB, r, "{:.1f}"),
            cell(r.concurrent, berth.concurrent, r, "{:.2f}"),
            cell(r.concurrent_bytes / MiB, berth.concurrent_bytes / MiB, r, "{:.1f}"),
        ]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--layer-mib", type=int, default=10)
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="berth-bench-proxy-"))
    upstream_root = workdir / "upstream"
    upstream = _distribution("docker-registry", workdir, upstream_root, None)
    try:
        asyncio.run(fill_upstream(upstream.url, args.layers, args.layer_mib))
        caches = [("berth", "berth"), ("distribution 2.8.2", "docker-registry")]
        if os.access(DIST_3, os.X_OK):
            caches.append(("distribution 3.1.1", str(DIST_3)))
        results = []
        for name, starter in caches:
            results.append(run_one(name, starter, upstream.url, workdir, args.clients))
            print(f"{name}: {results[-1]}", flush=True)
        text = table(results, args.layers * args.layer_mib, args.clients)
        print(text)
        (HERE / "proxy-results.md").write_text(text)
    finally:
        upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
