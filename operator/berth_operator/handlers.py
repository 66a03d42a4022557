"""kopf handlers: apply what the builders return, keep status conditions current.

Every object carries an owner reference, so deleting a Registry or a GarbageCollection lets
Kubernetes' garbage collector remove what it created — with no finalizer, which would block
deletion whenever the operator is not running. The data volume claim has no owner: it stays.

Handlers are idempotent (compare-and-patch, see ``kube.apply``) and never sleep: transient API
failures raise ``kopf.TemporaryError`` and kopf retries; a spec that cannot run sets the
``Degraded`` condition and raises ``kopf.PermanentError`` (no retry until the spec changes).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import kopf

from berth_operator import GROUP, VERSION
from berth_operator.builders import (
    CHECKSUM_ANNOTATION,
    GC_LABEL,
    MANAGED_BY,
    REGISTRY_LABEL,
    SpecError,
    build_gc_workload,
    build_registry_objects,
    in_cluster_url,
)
from berth_operator.crds import defaulted_spec
from berth_operator.kube import ApiError, Kube, apply, load_credentials
from berth_operator.status import (
    failed_conditions,
    gc_run_status,
    now_iso,
    registry_status,
    set_condition,
)

Obj = dict[str, Any]

DEFAULT_IMAGE_ENV = "BERTH_REGISTRY_IMAGE"
FALLBACK_IMAGE = "ghcr.io/berth-registry/berth:latest"

_kube: Kube | None = None


def default_image() -> str:
    return os.environ.get(DEFAULT_IMAGE_ENV) or FALLBACK_IMAGE


def kube() -> Kube:
    global _kube
    if _kube is None:
        _kube = Kube(load_credentials())
    return _kube


def plain(body: Any) -> Obj:
    """A kopf body (a read-only view) as plain JSON data."""
    return json.loads(json.dumps(dict(body), default=dict))  # type: ignore[no-any-return]


def temporary(e: ApiError, what: str) -> kopf.TemporaryError:
    delay = 5 if e.status in (409, 429) or e.status >= 500 else 30
    return kopf.TemporaryError(f"{what}: {e}", delay=delay)


# --------------------------------------------------------------------------- lifecycle


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Keep kopf's bookkeeping in annotations under our group: the CRDs' status is structural.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    kube()


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    global _kube
    if _kube is not None:
        await _kube.close()
        _kube = None


# --------------------------------------------------------------------------- Registry


async def _write_registry_status(namespace: str, name: str, status: Obj) -> None:
    try:
        await kube().patch("Registry", namespace, name, {"status": status}, subresource="status")
    except ApiError as e:
        if e.status != 404:
            raise temporary(e, "updating the Registry status") from e


OPTIONAL_KINDS = ("HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor", "Ingress")


async def _delete_owned(kind: str, namespace: str, name: str, owner_uid: str) -> bool:
    """Delete ``kind/name`` if this owner controls it (never a same-named foreign object)."""
    k = kube()
    if kind == "ServiceMonitor" and not await k.has_api(
        "monitoring.coreos.com/v1", "servicemonitors"
    ):
        return False
    current = await k.get(kind, namespace, name)
    if current is None:
        return False
    owners = (current.get("metadata") or {}).get("ownerReferences") or []
    if not any(o.get("uid") == owner_uid for o in owners):
        return False
    return await k.delete(kind, namespace, name)


@kopf.on.resume(GROUP, VERSION, "registries")
@kopf.on.create(GROUP, VERSION, "registries")
@kopf.on.update(GROUP, VERSION, "registries")
async def reconcile_registry(
    body: kopf.Body, name: str, namespace: str | None, logger: kopf.Logger, **_: Any
) -> None:
    assert namespace is not None  # namespaced resources
    registry = plain(body)
    meta = registry["metadata"]
    generation = meta.get("generation")
    previous = (registry.get("status") or {}).get("conditions") or []
    k = kube()
    try:
        monitors = await k.has_api("monitoring.coreos.com/v1", "servicemonitors")
        objects = build_registry_objects(
            registry, default_image(), service_monitor_supported=monitors
        )
    except SpecError as e:
        conditions = failed_conditions(previous, "InvalidSpec", str(e), generation, now_iso())
        await _write_registry_status(
            namespace, name, {"conditions": conditions, "observedGeneration": generation}
        )
        raise kopf.PermanentError(f"invalid spec: {e}") from e
    except ApiError as e:
        raise temporary(e, "API discovery") from e

    try:
        done = {}
        for obj in objects:
            kind = obj["kind"]
            done[kind] = await apply(k, obj, create_only=kind == "PersistentVolumeClaim")
        present = {obj["kind"] for obj in objects}
        for kind in OPTIONAL_KINDS:
            if kind not in present:
                await _delete_owned(kind, namespace, name, meta["uid"])
    except ApiError as e:
        if e.status in (400, 403, 422):
            conditions = failed_conditions(
                previous,
                "ApplyFailed",
                f"{e.status} {e.reason}: {e.message}",
                generation,
                now_iso(),
            )
            await _write_registry_status(namespace, name, {"conditions": conditions})
        raise temporary(e, "applying the registry's objects") from e
    logger.info("Applied: %s", ", ".join(f"{k} {v}" for k, v in done.items()))

    spec = defaulted_spec("Registry", registry.get("spec"))
    try:
        deployment = await k.get("Deployment", namespace, name)
    except ApiError as e:
        raise temporary(e, "reading the Deployment") from e
    deployment_obj = next(o for o in objects if o["kind"] == "Deployment")
    status = registry_status(previous, generation, deployment, now_iso())
    status["observedGeneration"] = generation
    status["url"] = in_cluster_url(name, namespace, spec)
    status["configChecksum"] = deployment_obj["spec"]["template"]["metadata"]["annotations"][
        CHECKSUM_ANNOTATION
    ]
    if done.get("Deployment") in ("created", "patched"):
        # A new rollout has started: the Deployment's status is about the previous one.
        status["conditions"] = set_condition(
            status["conditions"],
            "Progressing",
            True,
            "RollingOut",
            "the Deployment was " + done["Deployment"],
            generation,
            now_iso(),
        )
    await _write_registry_status(namespace, name, status)


@kopf.on.event(
    "apps",
    "v1",
    "deployments",
    labels={"app.kubernetes.io/managed-by": MANAGED_BY, REGISTRY_LABEL: kopf.PRESENT},
)
async def deployment_changed(body: kopf.Body, namespace: str | None, type: str, **_: Any) -> None:
    """Mirror a registry Deployment's rollout into its Registry's conditions."""
    assert namespace is not None  # namespaced resources
    if type == "DELETED":
        return
    deployment = plain(body)
    registry_name = deployment["metadata"]["labels"][REGISTRY_LABEL]
    try:
        registry = await kube().get("Registry", namespace, registry_name)
    except ApiError as e:
        raise temporary(e, "reading the Registry") from e
    if registry is None or registry["metadata"].get("deletionTimestamp"):
        return
    generation = registry["metadata"].get("generation")
    previous = (registry.get("status") or {}).get("conditions") or []
    degraded = next((c for c in previous if c.get("type") == "Degraded"), None)
    if degraded and degraded.get("reason") in ("InvalidSpec", "ApplyFailed"):
        return  # the spec handler owns the status until the spec is fixed
    status = registry_status(previous, generation, deployment, now_iso())
    current = registry.get("status") or {}
    if all(current.get(key) == value for key, value in status.items()):
        return  # nothing new: no write, no event
    await _write_registry_status(namespace, registry_name, status)


# --------------------------------------------------------------------------- GarbageCollection


async def _write_gc_status(namespace: str, name: str, status: Obj) -> None:
    try:
        await kube().patch(
            "GarbageCollection", namespace, name, {"status": status}, subresource="status"
        )
    except ApiError as e:
        if e.status != 404:
            raise temporary(e, "updating the GarbageCollection status") from e


@kopf.on.resume(GROUP, VERSION, "garbagecollections")
@kopf.on.create(GROUP, VERSION, "garbagecollections")
@kopf.on.update(GROUP, VERSION, "garbagecollections")
async def reconcile_gc(body: kopf.Body, name: str, namespace: str | None, **_: Any) -> None:
    assert namespace is not None  # namespaced resources
    gc = plain(body)
    generation = gc["metadata"].get("generation")
    previous = (gc.get("status") or {}).get("conditions") or []
    spec = defaulted_spec("GarbageCollection", gc.get("spec"))
    registry_name = spec["registryRef"]["name"]
    k = kube()
    try:
        registry = await k.get("Registry", namespace, registry_name)
    except ApiError as e:
        raise temporary(e, "reading the Registry") from e
    if registry is None:
        message = f"Registry {registry_name!r} not found in namespace {namespace!r}"
        conditions = failed_conditions(previous, "RegistryNotFound", message, generation, now_iso())
        await _write_gc_status(namespace, name, {"conditions": conditions})
        raise kopf.TemporaryError(message, delay=30)
    try:
        workload = build_gc_workload(gc, registry, default_image())
    except SpecError as e:
        message = f"Registry {registry_name!r} has an invalid spec: {e}"
        conditions = failed_conditions(previous, "InvalidRegistry", message, generation, now_iso())
        await _write_gc_status(namespace, name, {"conditions": conditions})
        raise kopf.TemporaryError(message, delay=60) from e
    try:
        action = await apply(k, workload, create_only=workload["kind"] == "Job")
        if workload["kind"] == "Job":
            await _delete_owned("CronJob", namespace, f"{name}-gc", gc["metadata"]["uid"])
    except ApiError as e:
        raise temporary(e, f"applying the {workload['kind']}") from e
    kind, job_name = workload["kind"], workload["metadata"]["name"]
    reason = "Scheduled" if kind == "CronJob" else "JobCreated"
    message = f"{kind} {job_name} {action}"
    now = now_iso()
    conditions = set_condition(previous, "Ready", True, reason, message, generation, now)
    conditions = set_condition(conditions, "Progressing", False, reason, message, generation, now)
    conditions = set_condition(conditions, "Degraded", False, "AsExpected", "", generation, now)
    await _write_gc_status(
        namespace,
        name,
        {
            "conditions": conditions,
            "observedGeneration": generation,
            "jobKind": kind,
            "jobName": job_name,
        },
    )


@kopf.on.event("batch", "v1", "jobs", labels={GC_LABEL: kopf.PRESENT})
async def gc_job_changed(body: kopf.Body, namespace: str | None, type: str, **_: Any) -> None:
    """Record a GC Job's outcome (and ``berth gc --json`` counts) in its GarbageCollection."""
    assert namespace is not None  # namespaced resources
    if type == "DELETED":
        return
    job = plain(body)
    gc_name = job["metadata"]["labels"][GC_LABEL]
    k = kube()
    try:
        gc = await k.get("GarbageCollection", namespace, gc_name)
        if gc is None:
            return
        pods: list[Obj] = []
        finished = (job.get("status") or {}).get("succeeded") or (job.get("status") or {}).get(
            "failed"
        )
        if finished:
            pods = await k.list("Pod", namespace, f"job-name={job['metadata']['name']}")
    except ApiError as e:
        raise temporary(e, "reading the GC job") from e
    run = gc_run_status(job, pods)
    last = (gc.get("status") or {}).get("lastRun") or {}
    if last.get("jobName") != run["jobName"] and str(last.get("startTime", "")) > str(
        run.get("startTime", "")
    ):
        return  # an older job's news
    if last == run:
        return
    await _write_gc_status(namespace, gc_name, {"lastRun": run})
