"""Time `berth gc` on a registry of N blobs (default 10,000) on SeaweedFS (S3) and the filesystem.

    .venv/bin/python scripts/bench_gc.py [--blobs 10000] [--drivers s3,filesystem]

Builds N blobs directly through the storage driver: images of 19 layers + config + manifest in
repositories of 50 images; half the images are tagged, half deleted (their blobs are garbage).
Then runs the real CLI: `berth gc --dry-run --json` and `berth gc --grace-period 0s --json`.
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
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from tests.service import gc_fixtures  # noqa: E402

from berth.storage.driver import StorageDriver  # noqa: E402

LAYERS = 19


async def populate(driver: StorageDriver, blobs: int) -> None:
    """The registry the docstring describes: the shared builder of the GC tests."""
    await gc_fixtures.populate(driver, blobs // (LAYERS + 2), LAYERS)


def run_gc(args: list[str], env: dict[str, str]) -> tuple[float, dict]:
    start = time.monotonic()
    proc = subprocess.run(
        [str(REPO / ".venv/bin/berth"), "gc", "--json", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"berth gc failed: {proc.stderr[-2000:]}")
    return wall, json.loads(proc.stdout)


def report(label: str, wall: float, r: dict) -> None:
    print(
        f"{label}: wall {wall:.1f}s (gc {r['elapsed_seconds']:.1f}s), scanned "
        f"{r['objects_scanned']} objects, {r['objects_per_second']:.0f} objects/s, "
        f"read {r['manifests_read']} manifests, blobs {r['blobs_total']} "
        f"(marked {r['blobs_marked']}), removed {r['blobs_deleted']} blobs / "
        f"{r['objects_removed']} objects"
    )


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blobs", type=int, default=10_000)
    ap.add_argument("--drivers", default="s3,filesystem")
    opts = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    for kind in opts.drivers.split(","):
        if kind == "s3":
            import s3_servers
            from berth.config import S3Settings
            from berth.storage.s3 import S3Driver

            server = s3_servers.start_seaweedfs()
            try:
                prefix = f"bench-{uuid.uuid4().hex[:8]}"
                conf = server.settings(root_directory=prefix)
                os.environ.pop("AWS_CA_BUNDLE", None)
                driver = S3Driver(S3Settings(**conf))
                await driver.start()
                t = time.monotonic()
                await populate(driver, opts.blobs)
                print(f"s3 (SeaweedFS): populated in {time.monotonic() - t:.1f}s")
                await driver.close()
                await asyncio.sleep(2.2)
                cfg = Path(tempfile.mkdtemp()) / "berth.yaml"
                cfg.write_text(json.dumps({"storage": {"driver": "s3", "s3": conf}}))
                report("s3 dry run", *run_gc(["--config", str(cfg), "--dry-run"], env))
                report("s3 gc", *run_gc(["--config", str(cfg), "--grace-period", "0s"], env))
                report("s3 gc again", *run_gc(["--config", str(cfg), "--grace-period", "0s"], env))
            finally:
                server.stop()
        else:
            from berth.storage.filesystem import FilesystemDriver

            root = Path(tempfile.mkdtemp(prefix="berth-bench-"))
            t = time.monotonic()
            await populate(FilesystemDriver(root), opts.blobs)
            print(f"filesystem: populated in {time.monotonic() - t:.1f}s")
            await asyncio.sleep(2.2)
            args = ["--storage-root", str(root)]
            report("fs dry run", *run_gc([*args, "--dry-run"], env))
            report("fs gc", *run_gc([*args, "--grace-period", "0s"], env))
            report("fs gc again", *run_gc([*args, "--grace-period", "0s"], env))


if __name__ == "__main__":
    asyncio.run(main())
