"""What the operator reports about serving, beside the objects it applies:

* ``StorageAvailable``: the registry's ``/healthz/storage``, probed through its Service by a kopf
  timer (readiness no longer depends on storage, so this is where an object-store outage shows);
* ``CRDUpToDate``: Helm installs ``crds/`` once and never upgrades them; an installed CRD whose
  ``berth.dev/schema-version`` is older than the operator's silently drops new fields, so it is
  detected at start-up, logged, and reported on every Registry;
* ``ConfigOverridden``: ``spec.config`` keys that contradict a dedicated field (the field wins).

The HTTP probe is injectable (``handlers.storage_probe``): tests use a fake or a local server.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from berth_operator.builders import config_conflicts, in_cluster_url
from berth_operator.crds import CRD_FILES, load_crds
from berth_operator.kube import ApiError, Kube
from berth_operator.status import set_condition

Obj = dict[str, Any]
log = logging.getLogger(__name__)

SCHEMA_ANNOTATION = "berth.dev/schema-version"
CRD_UPGRADE = "kubectl apply --server-side -f charts/berth/crds/"
StorageProbe = Callable[[str], Awaitable[tuple[bool, str]]]


# --------------------------------------------------------------------------- storage probe


def storage_health_url(name: str, namespace: str, spec: Obj) -> str:
    return in_cluster_url(name, namespace, spec) + "/healthz/storage"


async def http_storage_probe(url: str, timeout: float = 10.0) -> tuple[bool, str]:  # noqa: ASYNC109
    """GET ``url``: (True, …) on 200; (False, why) on another answer or no answer."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url) as rsp,
        ):
            text = await rsp.text()
            if rsp.status == 200:
                return True, "storage answers (/healthz/storage)"
            return False, f"/healthz/storage answered {rsp.status}: {text[:200]}"
    except (aiohttp.ClientError, TimeoutError) as e:
        return False, f"/healthz/storage did not answer: {type(e).__name__}: {e}"[:300]


def storage_conditions(
    conditions: list[Obj], result: tuple[bool, str] | None, generation: int | None, now: str
) -> list[Obj]:
    """``StorageAvailable`` from a probe result; ``None``: not probed (no ready replica)."""
    if result is None:
        updated = set_condition(
            conditions,
            "StorageAvailable",
            False,
            "NoReadyReplicas",
            "no ready replica to ask",
            generation,
            now,
        )
        for c in updated:
            if c["type"] == "StorageAvailable":
                previous = next((p for p in conditions if p.get("type") == "StorageAvailable"), {})
                if previous.get("status") != "Unknown":
                    c["lastTransitionTime"] = now
                c["status"] = "Unknown"
        return updated
    ok, message = result
    reason = "StorageReachable" if ok else "StorageUnreachable"
    return set_condition(conditions, "StorageAvailable", ok, reason, message, generation, now)


# --------------------------------------------------------------------------- CRD versions


def schema_version(crd: Obj | None) -> int | None:
    annotations = ((crd or {}).get("metadata") or {}).get("annotations") or {}
    try:
        return int(annotations[SCHEMA_ANNOTATION])
    except (KeyError, TypeError, ValueError):
        return None


def own_schema_versions() -> dict[str, tuple[str, int]]:
    """kind -> (CRD name, the schema version this operator ships)."""
    result = {}
    for kind, crd in load_crds().items():
        version = schema_version(crd)
        assert version is not None, f"the {kind} CRD has no {SCHEMA_ANNOTATION} annotation"
        result[kind] = (crd["metadata"]["name"], version)
    return result


def crd_problem(kind: str, installed: Obj | None) -> str | None:
    """Why the installed CRD of ``kind`` is older than this operator (None: it is not)."""
    crd_name, own = own_schema_versions()[kind]
    if installed is None:
        return None  # not installed: kopf reports that itself
    have = schema_version(installed)
    if have is not None and have >= own:
        return None
    shown = "no schema version" if have is None else f"schema version {have}"
    return (
        f"the installed CRD {crd_name} has {shown}, older than this operator's ({own}): fields "
        f"added since are dropped by the API server. Upgrade it: {CRD_UPGRADE}"
    )


async def check_crds(k: Kube) -> dict[str, str]:
    """kind -> problem, for every installed CRD older than the operator (logged)."""
    problems = {}
    assert len(CRD_FILES) == len(own_schema_versions())
    for kind, (crd_name, _) in own_schema_versions().items():
        try:
            installed = await k.get("CustomResourceDefinition", None, crd_name)
        except ApiError as e:
            log.warning("Could not read the CRD %s to compare versions: %s", crd_name, e)
            continue
        problem = crd_problem(kind, installed)
        if problem:
            log.warning("%s", problem)
            problems[kind] = problem
    return problems


# --------------------------------------------------------------------------- conditions


def serving_conditions(
    conditions: list[Obj],
    spec: Obj,
    crd_problems: dict[str, str],
    generation: int | None,
    now: str,
) -> list[Obj]:
    """``CRDUpToDate`` and ``ConfigOverridden`` of a Registry (``spec`` defaulted)."""
    problem = crd_problems.get("Registry") or crd_problems.get("GarbageCollection")
    conditions = set_condition(
        conditions,
        "CRDUpToDate",
        problem is None,
        "CRDOutdated" if problem else "AsExpected",
        problem or "",
        generation,
        now,
    )
    overridden = config_conflicts(spec)
    return set_condition(
        conditions,
        "ConfigOverridden",
        bool(overridden),
        "DedicatedFieldWins" if overridden else "NoConflict",
        ("spec.config is overridden by dedicated fields: " + "; ".join(overridden))
        if overridden
        else "",
        generation,
        now,
    )


__all__ = [
    "SCHEMA_ANNOTATION",
    "StorageProbe",
    "check_crds",
    "crd_problem",
    "http_storage_probe",
    "serving_conditions",
    "storage_conditions",
    "storage_health_url",
]
