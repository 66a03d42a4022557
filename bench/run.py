"""``make bench``: Berth against CNCF Distribution, side by side, same machine, same SeaweedFS
server (one bucket each, same settings), then the same on the filesystem driver.

``--distribution PATH`` picks the binary: by default the current release, 3.1.1, from
``../shared/bin`` (or ``$BERTH_BENCH_DISTRIBUTION``), else Debian's 2.8.2 ``docker-registry``.
Distribution 3 runs as its sample config does (in-memory blob descriptor cache), without
tracing export and without access logs.

Each workload runs against Berth, then Distribution, then again (alternating, ``--rounds``);
the best round of each is kept and the table shows the Berth/Distribution ratio (> 1: Berth is
ahead; for times and memory the ratio is Distribution/Berth, so > 1 still means Berth ahead).
Request rates come from wrk (GET) or an aiohttp client (HEAD: Debian's wrk 4.1 waits for a body
after a HEAD response); pushes use aiohttp. Every server listens on 127.0.0.1 and is stopped by
PID. Results: stdout and bench/results.md.

Some rows also show a *floor*: on S3 the same object-store requests sent by Berth's S3 client
with no registry in front (floor.py), for skopeo the same copy between OCI layouts on disk
(skopeo alone). Floor against Distribution is the highest ratio a registry could show there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(HERE))

import events_cost  # noqa: E402
from floor import StoreFloor  # noqa: E402

import s3_servers  # noqa: E402
from e2e.ocilayout import OCILayout  # noqa: E402

VENV_BIN = Path(sys.executable).parent
MiB = 1024 * 1024
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
CONCURRENCY = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def rss(self) -> int:
        """Resident memory of the process and all its descendants (bytes)."""
        total, todo = 0, [self.proc.pid]
        while todo:
            pid = todo.pop()
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo += [int(c) for c in (task / "children").read_text().split()]
        return total


def wait_ready(p: Proc) -> None:
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if p.proc.poll() is not None:
            raise RuntimeError(f"{p.name} exited")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{p.url}/v2/", timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{p.name} not ready")


def start_berth(
    workdir: Path, storage: dict[str, object], workers: int, extra: dict[str, object] | None = None
) -> Proc:
    port = free_port()
    cfg = workdir / f"berth-{port}.yaml"
    cfg.write_text(
        json.dumps(
            {
                "http": {"host": "127.0.0.1", "port": port, "workers": workers},
                "storage": storage,
                "observability": {"access_log": False, "log_level": "warning"},
                **(extra or {}),
            }
        )
    )
    log = (workdir / f"berth-{port}.log").open("wb")
    proc = subprocess.Popen(
        [str(VENV_BIN / "berth"), "serve", "--config", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    p = Proc("berth", proc, port)
    wait_ready(p)
    return p


def default_distribution() -> str:
    for candidate in (
        os.environ.get("BERTH_BENCH_DISTRIBUTION", ""),
        str(REPO.parent / "shared" / "bin" / "distribution-3.1.1"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return "docker-registry"


def distribution_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    match = re.search(r"v?(\d+\.\d+\.\d+)", out.stdout + out.stderr)
    return match.group(1) if match else "unknown"


def start_distribution(workdir: Path, storage: dict[str, object], binary: str) -> Proc:
    port = free_port()
    cfg = workdir / f"distribution-{port}.yml"
    major = distribution_version(binary).split(".")[0]
    extra: dict[str, object] = {}
    if major == "3":
        # As 3.x's sample config: descriptors cached in memory (never expired). 3.x addresses
        # buckets virtual-host style unless told otherwise; SeaweedFS needs path style.
        extra = {"cache": {"blobdescriptor": "inmemory"}}
        if "s3" in storage:
            storage = {"s3": {**storage["s3"], "forcepathstyle": True}}  # type: ignore[dict-item]
    cfg.write_text(
        json.dumps(
            {
                "version": 0.1,
                "log": {"level": "error", "accesslog": {"disabled": True}},
                "storage": {
                    **storage,
                    **extra,
                    "delete": {"enabled": True},
                    "maintenance": {"uploadpurging": {"enabled": False}},
                },
                "http": {"addr": f"127.0.0.1:{port}", "secret": "bench-secret"},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env["OTEL_TRACES_EXPORTER"] = "none"
    log = (workdir / f"distribution-{port}.log").open("wb")
    proc = subprocess.Popen(
        [binary, "serve", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    p = Proc("distribution", proc, port)
    wait_ready(p)
    return p


# -- workloads -----------------------------------------------------------------------------------


async def push_monolithic(s: aiohttp.ClientSession, url: str, repo: str, data: bytes) -> str:
    digest = sha256(data)
    async with s.post(f"{url}/v2/{repo}/blobs/uploads/") as r:
        assert r.status == 202, r.status
        loc = r.headers["Location"]
    loc = loc if loc.startswith("http") else url + loc
    sep = "&" if "?" in loc else "?"
    async with s.put(f"{loc}{sep}digest={digest}", data=data) as r:
        assert r.status == 201, (r.status, await r.text())
    return digest


async def push_chunked(
    s: aiohttp.ClientSession, url: str, repo: str, data: bytes, chunk: int
) -> str:
    digest = sha256(data)
    async with s.post(f"{url}/v2/{repo}/blobs/uploads/") as r:
        loc = r.headers["Location"]
    for off in range(0, len(data), chunk):
        piece = data[off : off + chunk]
        loc = loc if loc.startswith("http") else url + loc
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{off}-{off + len(piece) - 1}",
        }
        async with s.patch(loc, data=piece, headers=headers) as r:
            assert r.status == 202, (r.status, await r.text())
            loc = r.headers["Location"]
    loc = loc if loc.startswith("http") else url + loc
    sep = "&" if "?" in loc else "?"
    async with s.put(f"{loc}{sep}digest={digest}") as r:
        assert r.status == 201, (r.status, await r.text())
    return digest


async def gather_limited(n: int, jobs: list[Callable[[], Awaitable[object]]]) -> None:
    sem = asyncio.Semaphore(n)

    async def one(job: Callable[[], Awaitable[object]]) -> None:
        async with sem:
            await job()

    await asyncio.gather(*(one(j) for j in jobs))


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64), timeout=aiohttp.ClientTimeout(total=600)
    )


async def rate(
    url: str, method: str, headers: dict[str, str], seconds: float, expect: tuple[int, ...]
) -> float:
    """Requests per second with CONCURRENCY keep-alive connections (used for HEAD)."""
    count, stop = 0, time.monotonic() + seconds
    async with session() as s:

        async def worker() -> None:
            nonlocal count
            while time.monotonic() < stop:
                async with s.request(method, url, headers=headers, allow_redirects=False) as r:
                    await r.read()
                    assert r.status in expect, (url, r.status)
                count += 1

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return count / (time.monotonic() - t0)


def wrk(url: str, headers: dict[str, str], seconds: float) -> float:
    cmd = ["wrk", "-t2", f"-c{CONCURRENCY}", f"-d{max(1, round(seconds))}s"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise RuntimeError(f"wrk saw {bad.group(1)} error responses for {url}:\n{out}")
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert m, out
    return float(m.group(1))


@dataclass
class Fixture:
    repo: str
    manifest_digest: str
    blob_digest: str


async def prepare(url: str, repo: str) -> Fixture:
    """One image with 200 tags, for the read workloads."""
    async with session() as s:
        config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
        layer = os.urandom(256 * 1024)
        cd = await push_monolithic(s, url, repo, config)
        ld = await push_monolithic(s, url, repo, layer)
        body = manifest(cd, len(config), ld, len(layer))
        md = sha256(body)

        async def tag(i: int) -> None:
            async with s.put(
                f"{url}/v2/{repo}/manifests/t{i:03d}",
                data=body,
                headers={"Content-Type": MT_MANIFEST},
            ) as r:
                assert r.status == 201, r.status

        await gather_limited(CONCURRENCY, [lambda i=i: tag(i) for i in range(200)])
    return Fixture(repo, md, ld)


def manifest(cd: str, cs: int, ld: str, ls: int, note: str = "") -> bytes:
    m: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": cd, "size": cs},
        "layers": [{"mediaType": MT_LAYER, "digest": ld, "size": ls}],
    }
    if note:
        m["annotations"] = {"note": note}
    return json.dumps(m).encode()


class Bench:
    def __init__(self, seconds: float, workdir: Path) -> None:
        self.seconds = seconds
        self.workdir = workdir
        self.n = 0

    def repo(self, kind: str) -> str:
        self.n += 1
        return f"bench/{kind}{self.n}"

    # each returns (value, unit); "higher" tells whether higher is better
    async def push_small(self, p: Proc) -> float:
        repo = self.repo("small")
        blobs = [os.urandom(64 * 1024) for _ in range(300)]
        async with session() as s:
            t0 = time.monotonic()
            await gather_limited(
                CONCURRENCY, [lambda b=b: push_monolithic(s, p.url, repo, b) for b in blobs]
            )
            return 300 / (time.monotonic() - t0)

    async def push_big(self, p: Proc, chunk: int | None) -> float:
        repo = self.repo("big")
        data = os.urandom(64 * MiB)
        async with session() as s:
            t0 = time.monotonic()
            for _ in range(1):
                data = data[1:] + data[:1]  # a new blob each time
                if chunk is None:
                    await push_monolithic(s, p.url, repo, data)
                else:
                    await push_chunked(s, p.url, repo, data, chunk)
            return 64 / (time.monotonic() - t0)

    async def manifest_put(self, p: Proc, fx: Fixture) -> float:
        async with session() as s:
            async with s.get(
                f"{p.url}/v2/{fx.repo}/manifests/{fx.manifest_digest}",
                headers={"Accept": MT_MANIFEST},
            ) as r:
                base = json.loads(await r.read())
            bodies = []
            for i in range(300):
                m = dict(base)
                m["annotations"] = {"n": f"{self.n}-{i}"}
                bodies.append(json.dumps(m).encode())
            self.n += 1

            async def put(i: int, body: bytes) -> None:
                async with s.put(
                    f"{p.url}/v2/{fx.repo}/manifests/p{self.n}-{i}",
                    data=body,
                    headers={"Content-Type": MT_MANIFEST},
                ) as r:
                    assert r.status == 201, r.status

            t0 = time.monotonic()
            await gather_limited(
                CONCURRENCY, [lambda i=i, b=b: put(i, b) for i, b in enumerate(bodies)]
            )
            return len(bodies) / (time.monotonic() - t0)

    async def skopeo(self, p: Proc) -> tuple[float, float]:
        """Seconds skopeo takes to push the image to a new repository, then to pull it back."""
        src = self.workdir / "image"
        if not src.exists():
            layout = OCILayout(src)
            img = layout.add_image(layers=8, files_per_layer=20)
            layout.tag(img.descriptor, "v1")
        repo = self.repo("skopeo")
        dst = self.workdir / f"pulled-{self.n}"
        host = p.url.removeprefix("http://")
        push = self._skopeo(
            "--dest-tls-verify=false", f"oci:{src}:v1", f"docker://{host}/{repo}:v1"
        )
        pull = self._skopeo("--src-tls-verify=false", f"docker://{host}/{repo}:v1", f"oci:{dst}:v1")
        shutil.rmtree(dst, ignore_errors=True)
        return push, pull

    def _skopeo(self, *args: str) -> float:
        policy = self.workdir / "policy.json"
        if not policy.exists():
            policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        t0 = time.monotonic()
        subprocess.run(
            ["skopeo", "--policy", str(policy), "copy", *args], check=True, capture_output=True
        )
        return time.monotonic() - t0

    def skopeo_alone(self) -> float:
        """skopeo's own cost in each of those rows: the same copy between OCI layouts on disk
        (no registry, no network)."""
        src = self.workdir / "image"
        dst = self.workdir / "alone"
        elapsed = self._skopeo(f"oci:{src}:v1", f"oci:{dst}:v1")
        shutil.rmtree(dst, ignore_errors=True)
        return elapsed

    async def peak_rss(self, p: Proc) -> tuple[float, float]:
        """(RSS before the uploads, peak RSS during them), MiB, all server processes."""
        repo = self.repo("rss")
        base = os.urandom(64 * MiB)
        idle = peak = p.rss()
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, p.rss())
                time.sleep(0.05)

        t = threading.Thread(target=sample)
        t.start()
        try:
            async with session() as s:
                jobs = [
                    lambda i=i: push_monolithic(s, p.url, repo, base[i:] + base[:i])
                    for i in range(16)
                ]
                await gather_limited(16, jobs)
        finally:
            done.set()
            t.join()
        return idle / MiB, peak / MiB


@dataclass
class Row:
    name: str
    unit: str
    higher_is_better: bool
    berth: float = 0.0
    dist: float = 0.0
    floor: float = 0.0  # the store floor (floor.py), S3 rows that have one

    def keep(self, who: str, value: float) -> None:
        old = getattr(self, who)
        if old == 0.0:
            setattr(self, who, value)
        elif self.higher_is_better:
            setattr(self, who, max(old, value))
        else:
            setattr(self, who, min(old, value))

    @property
    def ratio(self) -> float:
        if not self.berth or not self.dist:
            return 0.0
        return self.berth / self.dist if self.higher_is_better else self.dist / self.berth

    @property
    def floor_ratio(self) -> float:
        """The highest ratio the floor allows: it against Distribution."""
        if not self.floor or not self.dist:
            return 0.0
        return self.floor / self.dist if self.higher_is_better else self.dist / self.floor

    def keep_floor(self, value: float) -> None:
        best = max if self.higher_is_better else min
        self.floor = best(self.floor, value) if self.floor else value


async def run_suite(
    servers: dict[str, Proc],
    rounds: int,
    seconds: float,
    workdir: Path,
    only: set[str],
    s3: dict[str, object] | None = None,
) -> list[Row]:
    """``s3``: settings of a bucket on the same store, for the store floor (floor.py)."""
    bench = Bench(seconds, workdir)
    fixtures = {who: await prepare(p.url, f"bench/read-{who}") for who, p in servers.items()}
    rows: dict[str, Row] = {}

    def row(name: str, unit: str, higher: bool = True) -> Row:
        return rows.setdefault(name, Row(name, unit, higher))

    accept = {"Accept": MT_MANIFEST}
    for round_no in range(rounds):
        # The RSS workload (16 x 64 MiB at once) runs once: it is long and only reports memory.
        # The 64 MiB pushes run every round, best kept, as the other rows: one push moves by
        # 20% between tries on this shared machine.
        heavy = round_no == 0
        for who in ("berth", "dist"):
            p, fx = servers[who], fixtures[who]
            u = f"{p.url}/v2/{fx.repo}"

            def want(
                name: str, is_heavy: bool = False, heavy: bool = heavy, who: str = who
            ) -> bool:
                if is_heavy and not heavy:
                    return False
                ok = not only or any(o in name for o in only)
                if ok:
                    print(f"  {who}: {name}", flush=True)
                return ok

            if want("push 300"):
                row("push 300 x 64 KiB blobs, 16 concurrent", "blobs/s").keep(
                    who, await bench.push_small(p)
                )
            if want("monolithic"):
                row("push 64 MiB blob, monolithic", "MiB/s").keep(
                    who, await bench.push_big(p, None)
                )
            if want("chunks"):
                row("push 64 MiB blob, 8 MiB chunks", "MiB/s").keep(
                    who, await bench.push_big(p, 8 * MiB)
                )
            if want("manifest PUT"):
                row("manifest PUT, 16 concurrent", "req/s").keep(
                    who, await bench.manifest_put(p, fx)
                )
            if want("GET by tag"):
                row("manifest GET by tag", "req/s").keep(
                    who, wrk(f"{u}/manifests/t007", accept, seconds)
                )
            if want("GET by digest"):
                row("manifest GET by digest", "req/s").keep(
                    who, wrk(f"{u}/manifests/{fx.manifest_digest}", accept, seconds)
                )
            if want("manifest HEAD"):
                row("manifest HEAD (by tag)", "req/s").keep(
                    who, await rate(f"{u}/manifests/t007", "HEAD", accept, seconds, (200,))
                )
            if want("blob HEAD"):
                row("blob HEAD", "req/s").keep(
                    who, await rate(f"{u}/blobs/{fx.blob_digest}", "HEAD", {}, seconds, (200, 307))
                )
            if want("redirect"):
                row("blob GET (S3: the 307 itself; filesystem: 256 KiB body)", "req/s").keep(
                    who, wrk(f"{u}/blobs/{fx.blob_digest}", {}, seconds)
                )
            if want("tags"):
                row("tags list (200 tags)", "req/s").keep(who, wrk(f"{u}/tags/list", {}, seconds))
            if want("skopeo"):
                push, pull = await bench.skopeo(p)
                row("skopeo push, 8 layers", "s", False).keep(who, push)
                row("skopeo pull, 8 layers", "s", False).keep(who, pull)
            if want("RSS", True):
                idle, peak = await bench.peak_rss(p)
                row("server RSS before those uploads (all processes)", "MiB", False).keep(who, idle)
                row("server peak RSS, 16 x 64 MiB concurrent uploads", "MiB", False).keep(who, peak)
        if s3 is not None:
            async with StoreFloor(s3, CONCURRENCY) as floor:
                for name, measure in (
                    ("push 64 MiB blob, monolithic", floor.push_whole),
                    ("push 64 MiB blob, 8 MiB chunks", floor.push_chunked),
                    ("manifest PUT, 16 concurrent", floor.manifest_put),
                ):
                    if name in rows:
                        print(f"  store floor: {name}", flush=True)
                        rows[name].keep_floor(await measure())
        if "skopeo push, 8 layers" in rows:
            print("  client floor: skopeo", flush=True)
            alone = bench.skopeo_alone()  # the same copy is both rows' floor
            for name in ("skopeo push, 8 layers", "skopeo pull, 8 layers"):
                rows[name].keep_floor(alone)
    return list(rows.values())


def table(title: str, rows: list[Row], dist_version: str) -> str:
    head = f"| workload | unit | Berth | Distribution {dist_version} | ratio (>1: Berth ahead) |"
    rule = "|---|---|---:|---:|---:|"
    floors = any(r.floor for r in rows)
    if floors:  # floor.py: the store with no registry in front; skopeo: skopeo alone
        head += " floor | highest ratio possible |"
        rule += "---:|---:|"
    out = [f"### {title}", "", head, rule]
    for r in rows:
        f = ".3f" if r.unit == "s" else ".1f"
        line = f"| {r.name} | {r.unit} | {r.berth:{f}} | {r.dist:{f}} | {r.ratio:.2f}x |"
        if floors:
            line += f" {r.floor:{f}} | {r.floor_ratio:.2f}x |" if r.floor else " | |"
        out.append(line)
    return "\n".join(out) + "\n"


def _commit() -> str:
    out = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True
    )
    return out.stdout.strip() or "unknown"


async def measure_events(
    workdir: Path, driver: str, weed: s3_servers.S3Server | None, workers: int, rounds: int
) -> list[tuple[str, float]]:
    """Manifest PUT with events off, on, and on with a hanging receiver (each its own storage)."""
    bench = Bench(0, workdir)

    def start(label: str, extra: dict[str, object]) -> Proc:
        if driver == "s3":
            assert weed is not None
            storage: dict[str, object] = {
                "driver": "s3",
                "s3": weed.settings(bucket=s3_servers.new_bucket(weed)),
            }
        else:
            root = workdir / f"events-{label.replace(' ', '-').replace(',', '')}"
            storage = {"filesystem": {"root": str(root)}}
        return start_berth(workdir, storage, workers, extra)

    async def prepared(p: Proc) -> Fixture:
        return await prepare(p.url, "bench/events")

    return await events_cost.compare(start, prepared, bench.manifest_put, rounds)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=4.0, help="duration of each rate run")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--drivers", default="s3,filesystem")
    ap.add_argument("--only", default="", help="comma-separated workload name fragments")
    ap.add_argument("--out", default=str(HERE / "results.md"))
    ap.add_argument(
        "--events",
        action="store_true",
        help="also measure manifest PUT with registry events off, on, and on with a hanging "
        "receiver (bench/events_cost.py)",
    )
    ap.add_argument(
        "--distribution", default=default_distribution(), help="Distribution binary to compare"
    )
    args = ap.parse_args()
    dist_version = distribution_version(args.distribution)
    only = {o.strip() for o in args.only.split(",") if o.strip()}
    workdir = Path(tempfile.mkdtemp(prefix="berth-bench-"))
    sections = [
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node()}: "
        f"{os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}; "
        f"Berth at {_commit()} with {args.workers} uvicorn workers (uvloop, httptools) "
        f"against CNCF Distribution {dist_version} ({args.distribution}); "
        f"best of {args.rounds} alternating rounds; rates with {CONCURRENCY} connections.\n"
    ]
    weed = None
    procs: list[Proc] = []
    try:
        for driver in args.drivers.split(","):
            if driver == "s3":
                weed = weed or s3_servers.start_seaweedfs(workdir=workdir / "weed")
                b_bucket, d_bucket = s3_servers.new_bucket(weed), s3_servers.new_bucket(weed)
                berth_storage: dict[str, object] = {
                    "driver": "s3",
                    "s3": weed.settings(bucket=b_bucket),
                }
                dist_storage: dict[str, object] = {
                    "s3": {
                        "accesskey": weed.access_key,
                        "secretkey": weed.secret_key,
                        "region": weed.region,
                        "regionendpoint": weed.endpoint,
                        "bucket": d_bucket,
                        "secure": False,
                        "v4auth": True,
                    }
                }
                title = "S3 (SeaweedFS, one bucket each; blob GETs redirected)"
            else:
                berth_storage = {"filesystem": {"root": str(workdir / "berth-fs")}}
                dist_storage = {"filesystem": {"rootdirectory": str(workdir / "dist-fs")}}
                title = "filesystem (local directory; blob GETs streamed)"
            berth = start_berth(workdir, berth_storage, args.workers)
            dist = start_distribution(workdir, dist_storage, args.distribution)
            procs += [berth, dist]
            print(f"== {title}", flush=True)
            floor_s3 = None
            if weed is not None and driver == "s3":
                floor_s3 = weed.settings(bucket=s3_servers.new_bucket(weed))
            rows = asyncio.run(
                run_suite(
                    {"berth": berth, "dist": dist},
                    args.rounds,
                    args.seconds,
                    workdir,
                    only,
                    floor_s3,
                )
            )
            section = table(title, rows, dist_version)
            print(section, flush=True)
            sections.append(section)
            berth.stop()
            dist.stop()
            if args.events:
                section = events_cost.table(
                    title,
                    asyncio.run(measure_events(workdir, driver, weed, args.workers, args.rounds)),
                )
                print(section, flush=True)
                sections.append(section)
    finally:
        for p in procs:
            p.stop()
        if weed is not None:
            weed.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    Path(args.out).write_text("\n".join(sections))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
