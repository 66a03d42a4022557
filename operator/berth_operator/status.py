"""Pure status computations: conditions for Registries, last-run results for GarbageCollections."""

from __future__ import annotations

import datetime
import json
from typing import Any

Obj = dict[str, Any]


def now_iso() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[Obj],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> list[Obj]:
    """Return ``conditions`` with ``type_`` set; its lastTransitionTime moves only on a change."""
    value = "True" if status else "False"
    result = [c for c in conditions if c.get("type") != type_]
    previous = next((c for c in conditions if c.get("type") == type_), None)
    since = previous.get("lastTransitionTime") if previous else None
    if previous is None or previous.get("status") != value or not since:
        since = now
    condition: Obj = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    result.append(condition)
    order = {"Ready": 0, "Progressing": 1, "Degraded": 2}
    return sorted(result, key=lambda c: order.get(str(c.get("type")), 9))


def failed_conditions(
    previous: list[Obj], reason: str, message: str, generation: int | None, now: str
) -> list[Obj]:
    conditions = set_condition(previous, "Ready", False, reason, message, generation, now)
    conditions = set_condition(conditions, "Progressing", False, reason, message, generation, now)
    return set_condition(conditions, "Degraded", True, reason, message, generation, now)


def registry_status(
    previous: list[Obj],
    generation: int | None,
    deployment: Obj | None,
    now: str,
) -> Obj:
    """Status fields of a Registry from its Deployment (None: not created yet)."""
    if deployment is None:
        conditions = set_condition(
            previous, "Ready", False, "Creating", "the Deployment is being created", generation, now
        )
        conditions = set_condition(
            conditions, "Progressing", True, "Creating", "creating objects", generation, now
        )
        conditions = set_condition(conditions, "Degraded", False, "AsExpected", "", generation, now)
        return {"conditions": conditions, "readyReplicas": 0}
    spec = deployment.get("spec") or {}
    st = deployment.get("status") or {}
    desired = int(spec.get("replicas", 1))
    ready = int(st.get("readyReplicas") or 0)
    updated = int(st.get("updatedReplicas") or 0)
    total = int(st.get("replicas") or 0)
    observed = int(st.get("observedGeneration") or 0) >= int(
        (deployment.get("metadata") or {}).get("generation") or 0
    )
    rolled_out = observed and updated >= desired and ready >= desired and total <= desired
    stalled = any(
        c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
        for c in st.get("conditions") or []
    )
    counts = f"{ready}/{desired} replicas ready"
    conditions = set_condition(
        previous,
        "Ready",
        ready >= desired and desired > 0,
        "MinimumReplicasAvailable" if ready >= desired and desired > 0 else "ReplicasNotReady",
        counts,
        generation,
        now,
    )
    conditions = set_condition(
        conditions,
        "Progressing",
        not rolled_out,
        "RollingOut" if not rolled_out else "RolloutComplete",
        f"{updated}/{desired} replicas updated, {ready} ready",
        generation,
        now,
    )
    conditions = set_condition(
        conditions,
        "Degraded",
        stalled,
        "ProgressDeadlineExceeded" if stalled else "AsExpected",
        "the rollout exceeded its progress deadline" if stalled else "",
        generation,
        now,
    )
    return {"conditions": conditions, "replicas": desired, "readyReplicas": ready}


# --------------------------------------------------------------------------- garbage collection


def parse_gc_counts(text: str) -> dict[str, int]:
    """Integer fields of ``berth gc --json`` output (nested objects flattened with ``_``)."""
    for line in reversed(text.strip().splitlines() or [""]):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict):
            break
    else:
        try:
            data = json.loads(text)
        except ValueError:
            return {}
        if not isinstance(data, dict):
            return {}
    counts: dict[str, int] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, int):
            counts[prefix] = value
        elif isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}_{key}" if prefix else str(key), sub)

    walk("", data)
    return counts


def gc_run_status(job: Obj, pods: list[Obj]) -> Obj:
    """``status.lastRun`` of a GarbageCollection from one of its Jobs and that Job's pods."""
    st = job.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in st.get("conditions") or []}
    if conditions.get("Complete") == "True" or (st.get("succeeded") or 0) > 0:
        result = "Succeeded"
    elif conditions.get("Failed") == "True":
        result = "Failed"
    else:
        result = "Running"
    run: Obj = {"jobName": job["metadata"]["name"], "result": result}
    start = st.get("startTime") or (job.get("metadata") or {}).get("creationTimestamp")
    if start:
        run["startTime"] = start
    if st.get("completionTime"):
        run["completionTime"] = st["completionTime"]
    if result != "Running":
        for pod in sorted(
            pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp", ""))
        ):
            for container in (pod.get("status") or {}).get("containerStatuses") or []:
                terminated = (container.get("state") or {}).get("terminated") or {}
                counts = parse_gc_counts(terminated.get("message") or "")
                if counts:
                    run["counts"] = counts
    return run


def gc_conditions(
    previous: list[Obj],
    generation: int | None,
    kind: str,
    job_name: str,
    suspended: bool,
    last_run: Obj | None,
    now: str,
) -> list[Obj]:
    """A GarbageCollection's conditions once its CronJob or Job is in place."""
    run = last_run if last_run and last_run.get("jobName") == job_name else None
    if suspended:
        reason, message = "Suspended", f"{kind} {job_name} is suspended"
    elif kind == "CronJob":
        reason, message = "Scheduled", f"CronJob {job_name} is scheduled"
    elif run and run.get("result") in ("Succeeded", "Failed"):
        reason = "Completed"
        message = (
            f"Job {job_name} ran once ({run['result'].lower()}); a one-shot collection runs once "
            "per spec: change dryRun, deleteUntagged or gracePeriod to run it again"
        )
    elif run:
        reason, message = "Running", f"Job {job_name} is running"
    else:
        reason, message = "JobCreated", f"Job {job_name} is created"
    failed = bool(run and run.get("result") == "Failed")
    conditions = set_condition(previous, "Ready", True, reason, message, generation, now)
    conditions = set_condition(
        conditions, "Progressing", reason == "Running", reason, message, generation, now
    )
    return set_condition(
        conditions,
        "Degraded",
        failed,
        "JobFailed" if failed else "AsExpected",
        f"Job {job_name} failed" if failed else "",
        generation,
        now,
    )
