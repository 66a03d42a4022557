"""How many CPUs this process may use: the container's CPU limit (cgroup quota), else the CPU
affinity. ``berth serve`` starts that many workers unless ``http.workers`` says otherwise, so
a pod limited to 2 CPUs on a 64-core node runs 2 workers, not 64."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def cgroup_limit(root: Path = CGROUP) -> float | None:
    """The CPU quota in CPUs (cgroup v2 ``cpu.max``, or v1 ``cfs_quota_us``), None if none."""
    try:
        fields = (root / "cpu.max").read_text().split()
        if fields and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cpus(root: Path = CGROUP) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    limit = cgroup_limit(root)
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)
