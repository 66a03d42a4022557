"""kopf handlers: keep the cluster in the declared state, keep status conditions current.

Every object carries an owner reference, so deleting a Registry or a GarbageCollection lets
Kubernetes' garbage collector remove what it created — with no finalizer, which would block
deletion whenever the operator is not running. The data volume claim has no owner: it stays.

What triggers a reconciliation (``sync_registry`` / ``sync_gc``, both idempotent):

- the custom resource itself (kopf's create, update and resume handlers);
- an event on an object it owns (labelled ``app.kubernetes.io/managed-by: berth-operator`` and
  ``berth.dev/registry`` or ``berth.dev/garbage-collection``, mapped back to the owner by its
  owner reference): a deleted object is re-created, an edited one patched back (drift repair);
- for a GarbageCollection, a change of its Registry (its CronJob copies the Registry's image,
  credentials, service account and volume);
- a periodic resync of every resource seen (``BERTH_OPERATOR_RESYNC_SECONDS``, default 300; 0
  turns it off) for what no event reports: an object that went while a watch was expired (410),
  or a label edited away.

An existing object of the desired name that the resource does not own is never touched: it is
reported (``Degraded``, reason ``NameConflict``) and retried. Handlers never sleep: transient API
failures raise ``kopf.TemporaryError`` and kopf retries; a spec that cannot run sets the
``Degraded`` condition and raises ``kopf.PermanentError`` (no retry until the spec changes). An
object the API server refuses (400, 403, 422) is reported as ``Degraded``/``ApplyFailed`` with
the server's message; the next spec change and the periodic resync try again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
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
    node_setup_name,
    selector_string,
)
from berth_operator.crds import defaulted_spec
from berth_operator.kube import ApiError, Kube, NameConflict, apply, drift, load_credentials
from berth_operator.serving import (
    StorageProbe,
    check_crds,
    http_storage_probe,
    serving_conditions,
    storage_conditions,
    storage_health_url,
)
from berth_operator.status import (
    failed_conditions,
    gc_conditions,
    gc_run_status,
    now_iso,
    registry_status,
    set_condition,
)

Obj = dict[str, Any]

DEFAULT_IMAGE_ENV = "BERTH_REGISTRY_IMAGE"
FALLBACK_IMAGE = "ghcr.io/berth-registry/berth:latest"
RESYNC_ENV = "BERTH_OPERATOR_RESYNC_SECONDS"
DEFAULT_RESYNC_SECONDS = 300.0
CONFLICT_RETRY = 60
# Status reasons a Deployment event must not overwrite: the spec handler reported them.
SPEC_FAILURES = ("InvalidSpec", "ApplyFailed", "NameConflict")

_kube: Kube | None = None
# Serving status (berth_operator.serving): the probe is replaceable (tests use a fake).
storage_probe: StorageProbe = http_storage_probe
STORAGE_PROBE_ENV = "BERTH_OPERATOR_STORAGE_PROBE_SECONDS"
STORAGE_PROBE_SECONDS = float(os.environ.get(STORAGE_PROBE_ENV) or 30)
crd_problems: dict[str, str] = {}  # kind -> why its installed CRD is older than the operator
watched_namespaces: list[str] = []  # set by main.run (globs); empty: every namespace
_probe_task: asyncio.Task[None] | None = None
_locks: dict[str, asyncio.Lock] = {}

log = logging.getLogger(__name__)


def default_image() -> str:
    return os.environ.get(DEFAULT_IMAGE_ENV) or FALLBACK_IMAGE


def kube() -> Kube:
    global _kube
    if _kube is None:
        _kube = Kube(load_credentials())
    return _kube


def lock(uid: str) -> asyncio.Lock:
    """One reconciliation at a time per resource (handlers, events and timers all call in)."""
    return _locks.setdefault(uid, asyncio.Lock())


def plain(body: Any) -> Obj:
    """A kopf body (a read-only view) as plain JSON data."""
    return json.loads(json.dumps(dict(body), default=dict))  # type: ignore[no-any-return]


def temporary(e: ApiError, what: str) -> kopf.TemporaryError:
    delay = 1 if e.status == 409 else 5 if e.status == 429 or e.status >= 500 else 30
    return kopf.TemporaryError(f"{what}: {e}", delay=delay)


def refused(e: ApiError) -> bool:
    """The API server refused the object itself: retrying the same request cannot succeed."""
    return e.status in (400, 403, 422)


def changed(current: Obj | None, update: Obj) -> bool:
    current = current or {}
    return any(current.get(key) != value for key, value in update.items())


def owned_by(obj: Obj, owner: Obj) -> bool:
    uid = owner["metadata"].get("uid")
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid for r in refs)


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
    # Watch only what the operator created, filtered by the API server (not every ConfigMap,
    # Service or Job of the cluster streamed to the operator and dropped there).
    for key, selector in WATCH_SELECTORS.items():
        settings.watching.label_selectors[key] = selector
    _locks.clear()
    _known.clear()
    kube()
    global _resync_task
    resync = float(os.environ.get(RESYNC_ENV) or DEFAULT_RESYNC_SECONDS)
    if resync > 0:
        _resync_task = asyncio.create_task(_resync_forever(resync), name="berth-resync")


@kopf.on.startup()
async def compare_crd_versions(**_: Any) -> None:
    """Helm never upgrades crds/: report an installed CRD older than this operator."""
    crd_problems.clear()
    crd_problems.update(await check_crds(kube()))


@kopf.on.startup()
async def start_storage_probes(**_: Any) -> None:
    """Probe every Registry's storage health periodically. A plain task, not a kopf timer: kopf
    puts a finalizer on resources with timers, and Registries deliberately have none."""
    global _probe_task
    _probe_task = asyncio.create_task(_probe_loop(), name="berth-storage-probes")


async def _probe_loop() -> None:
    while True:
        try:
            await probe_all_registries()
        except Exception:  # a failed round is logged; the next one tries again
            log.exception("Storage probes failed")
        await asyncio.sleep(STORAGE_PROBE_SECONDS)


async def probe_all_registries() -> None:
    if watched_namespaces and not any(set(p) & set("*?[") for p in watched_namespaces):
        # Named namespaces: list each (a namespaced Role is enough).
        registries = [r for ns in watched_namespaces for r in await kube().list("Registry", ns, "")]
    else:
        registries = await kube().list("Registry", None, "")
    watched = [
        r
        for r in registries
        if not watched_namespaces
        or any(fnmatch.fnmatchcase(r["metadata"]["namespace"], p) for p in watched_namespaces)
    ]
    results = await asyncio.gather(*(probe_storage(r) for r in watched), return_exceptions=True)
    for registry, result in zip(watched, results, strict=True):
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            log.warning("Probing Registry %s: %s", registry["metadata"]["name"], result)


@kopf.on.cleanup()
async def stop_storage_probes(**_: Any) -> None:
    global _probe_task
    if _probe_task is not None:
        _probe_task.cancel()
        await asyncio.gather(_probe_task, return_exceptions=True)
        _probe_task = None


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    global _kube, _resync_task
    if _resync_task is not None:
        _resync_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await _resync_task
        _resync_task = None
    if _kube is not None:
        await _kube.close()
        _kube = None


# --------------------------------------------------------------------------- Registry


async def _write_registry_status(registry: Obj, status: Obj) -> None:
    """Patch the status subresource when something in ``status`` differs (no write, no event,
    otherwise: resyncs and drift repairs stay silent)."""
    if not changed(registry.get("status"), status):
        return
    meta = registry["metadata"]
    try:
        await kube().patch(
            "Registry", meta["namespace"], meta["name"], {"status": status}, subresource="status"
        )
    except ApiError as e:
        if e.status != 404:
            raise temporary(e, "updating the Registry status") from e


OPTIONAL_KINDS = (
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "ServiceMonitor",
    "Ingress",
    "NetworkPolicy",
    "HTTPRoute",
    "Certificate",
)
# Optional objects named after the Registry otherwise: (kind, name suffix function).
OPTIONAL_NAMED = (("DaemonSet", node_setup_name), ("ConfigMap", node_setup_name))


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


async def _registry_objects(registry: Obj) -> list[Obj]:
    k = kube()
    meta = registry["metadata"]
    monitors = await k.has_api("monitoring.coreos.com/v1", "servicemonitors")
    routes = await k.has_api("gateway.networking.k8s.io/v1", "httproutes")
    certificates = await k.has_api("cert-manager.io/v1", "certificates")
    cluster_ip = None
    if ((registry.get("spec") or {}).get("nodeSetup") or {}).get("enabled"):
        # The node-setup DaemonSet points containerd at the Service's cluster IP.
        service = await k.get("Service", meta["namespace"], meta["name"])
        cluster_ip = ((service or {}).get("spec") or {}).get("clusterIP")
    return build_registry_objects(
        registry,
        default_image(),
        service_monitor_supported=monitors,
        gateway_supported=routes,
        cert_manager_supported=certificates,
        cluster_ip=cluster_ip,
    )


async def sync_registry(registry: Obj, logger: logging.Logger | kopf.Logger = log) -> None:
    """Bring everything ``registry`` declares to that state, report it in status, and bring the
    GarbageCollections that copy its settings along."""
    async with lock(registry["metadata"]["uid"]):
        await _sync_registry(registry, logger)
    await _sync_gcs_of(registry, logger)


async def _sync_registry(registry: Obj, logger: logging.Logger | kopf.Logger) -> None:
    meta = registry["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    generation = meta.get("generation")
    previous = (registry.get("status") or {}).get("conditions") or []
    k = kube()
    try:
        objects = await _registry_objects(registry)
    except SpecError as e:
        conditions = failed_conditions(previous, "InvalidSpec", str(e), generation, now_iso())
        await _write_registry_status(
            registry, {"conditions": conditions, "observedGeneration": generation}
        )
        raise kopf.PermanentError(f"invalid spec: {e}") from e
    except ApiError as e:
        raise temporary(e, "API discovery") from e

    done: dict[str, str] = {}
    conflicts: list[str] = []
    try:
        for obj in objects:
            kind = obj["kind"]
            try:
                done[kind] = await apply(k, obj, create_only=kind == "PersistentVolumeClaim")
            except NameConflict as e:
                conflicts.append(str(e))
        present = {obj["kind"] for obj in objects}
        for kind in OPTIONAL_KINDS:
            if kind not in present:
                await _delete_owned(kind, namespace, name, meta["uid"])
        names = {(obj["kind"], obj["metadata"]["name"]) for obj in objects}
        for kind, name_of in OPTIONAL_NAMED:
            if (kind, name_of(name)) not in names:
                await _delete_owned(kind, namespace, name_of(name), meta["uid"])
    except ApiError as e:
        if refused(e):
            message = f"{e.status} {e.reason}: {e.message}"
            conditions = failed_conditions(previous, "ApplyFailed", message, generation, now_iso())
            await _write_registry_status(registry, {"conditions": conditions})
            # Not retried as is: the periodic resync and the next spec change try again.
            raise kopf.PermanentError(f"applying the registry's objects: {e}") from e
        raise temporary(e, "applying the registry's objects") from e
    if conflicts:
        message = "; ".join(conflicts)
        conditions = failed_conditions(previous, "NameConflict", message, generation, now_iso())
        await _write_registry_status(registry, {"conditions": conditions})
        raise kopf.TemporaryError(message, delay=CONFLICT_RETRY)
    if any(action != "unchanged" for action in done.values()):
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
    status["selector"] = selector_string(name)  # for the scale subresource
    status["conditions"] = serving_conditions(
        status["conditions"], spec, crd_problems, generation, now_iso()
    )
    await _write_registry_status(registry, status)
    if spec["nodeSetup"]["enabled"] and not any(o["kind"] == "DaemonSet" for o in objects):
        # Created just now: the Service's cluster IP is known from the next pass on.
        raise kopf.TemporaryError("waiting for the Service's cluster IP (node setup)", delay=1)


async def _sync_gcs_of(registry: Obj, logger: logging.Logger | kopf.Logger) -> None:
    """Reconcile the GarbageCollections of ``registry`` (their jobs copy its settings)."""
    meta = registry["metadata"]
    try:
        gcs = await kube().list("GarbageCollection", meta["namespace"], "")
    except ApiError as e:
        logger.warning("Listing the GarbageCollections of %s failed: %s", meta["name"], e)
        return
    for gc in gcs:
        if ((gc.get("spec") or {}).get("registryRef") or {}).get("name") != meta["name"]:
            continue
        if (gc.get("metadata") or {}).get("deletionTimestamp"):
            continue
        try:
            await sync_gc(gc, registry)
        except (kopf.PermanentError, kopf.TemporaryError) as e:
            logger.warning("GarbageCollection %s: %s", gc["metadata"]["name"], e)


async def _resync_registry(registry: Obj, logger: logging.Logger | kopf.Logger) -> None:
    """A reconciliation nobody retries (events, timers): failures are in status and logged."""
    try:
        await sync_registry(registry, logger)
    except (kopf.PermanentError, kopf.TemporaryError) as e:
        logger.warning("Reconciling Registry %s: %s", registry["metadata"]["name"], e)


@kopf.on.resume(GROUP, VERSION, "registries")
@kopf.on.create(GROUP, VERSION, "registries")
@kopf.on.update(GROUP, VERSION, "registries")
async def reconcile_registry(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
    await sync_registry(plain(body), logger)


async def probe_storage(registry: Obj) -> None:
    """``StorageAvailable``: ask a replica, through the Service, whether storage answers."""
    meta = registry["metadata"]
    current = registry.get("status") or {}
    if not current.get("observedGeneration"):
        return  # not reconciled yet (or an invalid spec): nothing serves
    spec = defaulted_spec("Registry", registry.get("spec"))
    result = None
    if current.get("readyReplicas"):
        result = await storage_probe(storage_health_url(meta["name"], meta["namespace"], spec))
    async with lock(meta["uid"]):
        # Conditions are one list in a merge patch: start from the latest, under the lock the
        # reconciliations take, so no concurrent status write is lost.
        try:
            latest = await kube().get("Registry", meta["namespace"], meta["name"])
        except ApiError as e:
            raise temporary(e, "reading the Registry") from e
        if latest is None or latest["metadata"].get("uid") != meta["uid"]:
            return
        conditions = (latest.get("status") or {}).get("conditions") or []
        updated = storage_conditions(conditions, result, meta.get("generation"), now_iso())
        await _write_registry_status(latest, {"conditions": updated})


async def _owner_registry(obj: Obj, namespace: str) -> Obj | None:
    """The live Registry that owns ``obj`` (by owner reference; by labels for the PVC)."""
    registry_name = ((obj.get("metadata") or {}).get("labels") or {}).get(REGISTRY_LABEL)
    if not registry_name:
        return None
    try:
        registry = await kube().get("Registry", namespace, registry_name)
    except ApiError as e:
        raise temporary(e, "reading the Registry") from e
    if registry is None or registry["metadata"].get("deletionTimestamp"):
        return None
    if obj.get("kind") != "PersistentVolumeClaim" and not owned_by(obj, registry):
        return None  # a leftover of an earlier Registry of that name, or not ours at all
    return registry


async def _drifted(registry: Obj, obj: Obj) -> bool:
    """Whether ``obj`` (live) differs from what ``registry`` declares for it."""
    try:
        objects = await _registry_objects(registry)
    except (SpecError, ApiError):
        return False  # the Registry's own handler reports it
    meta = obj.get("metadata") or {}
    desired = next(
        (
            o
            for o in objects
            if o["kind"] == obj.get("kind") and o["metadata"]["name"] == meta.get("name")
        ),
        None,
    )
    if desired is None:
        return obj.get("kind") in OPTIONAL_KINDS  # no longer wanted: delete it
    if desired["kind"] == "PersistentVolumeClaim":
        return False  # created once, never patched
    return bool(drift(desired, obj))


async def repair(
    obj: Obj, event: str | None, namespace: str, logger: logging.Logger | kopf.Logger
) -> bool:
    """React to an event on an object a Registry owns; True if the Registry was reconciled."""
    registry = await _owner_registry(obj, namespace)
    if registry is None:
        return False
    if event != "DELETED" and not await _drifted(registry, obj):
        return False
    logger.info(
        "%s %s %s: reconciling Registry %s",
        obj.get("kind"),
        obj["metadata"]["name"],
        "deleted" if event == "DELETED" else "drifted",
        registry["metadata"]["name"],
    )
    await _resync_registry(registry, logger)
    return True


# Kinds a Registry owns, watched for drift (the Deployment has its own handler below; a
# ServiceMonitor's CRD may not exist, so the periodic resync covers it).
OWNED_RESOURCES = (
    ("v1", "configmaps"),
    ("v1", "services"),
    ("v1", "persistentvolumeclaims"),
    ("autoscaling/v2", "horizontalpodautoscalers"),
    ("policy/v1", "poddisruptionbudgets"),
    ("networking.k8s.io/v1", "ingresses"),
)
OWNED_LABELS: dict[str, Any] = {
    "app.kubernetes.io/managed-by": MANAGED_BY,
    REGISTRY_LABEL: kopf.PRESENT,
}
# Server-side label selectors of the watches on owned kinds (the handlers' ``labels`` filters
# then only confirm what the API server already selected).
_OWNED_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY},{REGISTRY_LABEL}"
WATCH_SELECTORS: dict[tuple[str, str], str] = {
    **{resource: _OWNED_SELECTOR for resource in OWNED_RESOURCES},
    ("apps/v1", "deployments"): _OWNED_SELECTOR,
    ("batch/v1", "cronjobs"): f"app.kubernetes.io/managed-by={MANAGED_BY},{GC_LABEL}",
    ("batch/v1", "jobs"): GC_LABEL,
}


async def owned_changed(
    body: kopf.Body, namespace: str | None, type: str | None, logger: kopf.Logger, **_: Any
) -> None:
    """Drift repair: an owned object was deleted or edited away from its declared state."""
    assert namespace is not None  # namespaced resources
    await repair(plain(body), type, namespace, logger)


for _api_version, _plural in OWNED_RESOURCES:
    kopf.on.event(_api_version, _plural, labels=OWNED_LABELS, id=f"drift-{_plural}")(owned_changed)


@kopf.on.event("apps", "v1", "deployments", labels=OWNED_LABELS)
async def deployment_changed(
    body: kopf.Body, namespace: str | None, type: str | None, logger: kopf.Logger, **_: Any
) -> None:
    """Repair a drifted or deleted registry Deployment; mirror its rollout into the Registry's
    conditions."""
    assert namespace is not None  # namespaced resources
    deployment = plain(body)
    if await repair(deployment, type, namespace, logger) or type == "DELETED":
        return
    registry = await _owner_registry(deployment, namespace)
    if registry is None:
        return
    generation = registry["metadata"].get("generation")
    previous = (registry.get("status") or {}).get("conditions") or []
    degraded = next((c for c in previous if c.get("type") == "Degraded"), None)
    if degraded and degraded.get("status") == "True" and degraded.get("reason") in SPEC_FAILURES:
        return  # the spec handler owns the status until the spec is fixed
    status = registry_status(previous, generation, deployment, now_iso())
    await _write_registry_status(registry, status)


# --------------------------------------------------------------------------- GarbageCollection


async def _write_gc_status(gc: Obj, status: Obj) -> None:
    if not changed(gc.get("status"), status):
        return
    meta = gc["metadata"]
    try:
        await kube().patch(
            "GarbageCollection",
            meta["namespace"],
            meta["name"],
            {"status": status},
            subresource="status",
        )
    except ApiError as e:
        if e.status != 404:
            raise temporary(e, "updating the GarbageCollection status") from e


def _recorded_job(gc: Obj, job_name: str) -> str | None:
    """The one-shot Job this GarbageCollection already created for its current spec, if any.

    A one-shot collection runs once: its Job is created once (its name is recorded in status)
    and never again -- not after an operator restart, a Registry change, or the Job's deletion
    (``ttlSecondsAfterFinished``). A Job recorded by an older operator (other naming) counts when
    the spec has not changed since (same observed generation).
    """
    status = gc.get("status") or {}
    recorded = status.get("jobName") if status.get("jobKind") == "Job" else None
    if not recorded:
        return None
    if recorded == job_name:
        return job_name
    if status.get("observedGeneration") == gc["metadata"].get("generation"):
        return str(recorded)
    return None


async def sync_gc(gc: Obj, registry: Obj | None = None) -> None:
    """Bring a GarbageCollection's CronJob or one-shot Job to the declared state."""
    async with lock(gc["metadata"]["uid"]):
        await _sync_gc(gc, registry)


async def _sync_gc(gc: Obj, registry: Obj | None) -> None:
    meta = gc["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    generation = meta.get("generation")
    status = gc.get("status") or {}
    previous = status.get("conditions") or []
    spec = defaulted_spec("GarbageCollection", gc.get("spec"))
    registry_name = spec["registryRef"]["name"]
    k = kube()

    def fail(reason: str, message: str) -> Obj:
        return {"conditions": failed_conditions(previous, reason, message, generation, now_iso())}

    if registry is None:
        try:
            registry = await k.get("Registry", namespace, registry_name)
        except ApiError as e:
            raise temporary(e, "reading the Registry") from e
    if registry is None:
        message = f"Registry {registry_name!r} not found in namespace {namespace!r}"
        await _write_gc_status(gc, fail("RegistryNotFound", message))
        raise kopf.TemporaryError(message, delay=30)
    try:
        workload = build_gc_workload(gc, registry, default_image())
    except SpecError as e:
        message = f"Registry {registry_name!r} has an invalid spec: {e}"
        await _write_gc_status(gc, fail("InvalidRegistry", message))
        raise kopf.TemporaryError(message, delay=60) from e
    kind, job_name = workload["kind"], workload["metadata"]["name"]
    try:
        if kind == "CronJob":
            await apply(k, workload)
        else:
            recorded = _recorded_job(gc, job_name)
            if recorded is None:
                await apply(k, workload, create_only=True)
            else:
                job_name = recorded
                live = await k.get("Job", namespace, recorded)
                if live is not None and owned_by(live, gc):
                    # Only suspend is changed on the one run; its pod template is immutable.
                    suspend = bool(spec["suspend"])
                    if bool((live.get("spec") or {}).get("suspend")) != suspend:
                        await k.patch("Job", namespace, recorded, {"spec": {"suspend": suspend}})
            await _delete_owned("CronJob", namespace, f"{name}-gc", meta["uid"])
    except NameConflict as e:
        await _write_gc_status(gc, fail("NameConflict", str(e)))
        raise kopf.TemporaryError(str(e), delay=CONFLICT_RETRY) from e
    except ApiError as e:
        if refused(e):
            await _write_gc_status(gc, fail("ApplyFailed", f"{e.status} {e.reason}: {e.message}"))
            # Not retried as is: the periodic resync and the next spec change try again.
            raise kopf.PermanentError(f"applying the {kind}: {e}") from e
        raise temporary(e, f"applying the {kind}") from e
    suspended = bool(spec["suspend"])
    last_run = status.get("lastRun")
    conditions = gc_conditions(previous, generation, kind, job_name, suspended, last_run, now_iso())
    await _write_gc_status(
        gc,
        {
            "conditions": conditions,
            "observedGeneration": generation,
            "jobKind": kind,
            "jobName": job_name,
        },
    )


@kopf.on.resume(GROUP, VERSION, "garbagecollections")
@kopf.on.create(GROUP, VERSION, "garbagecollections")
@kopf.on.update(GROUP, VERSION, "garbagecollections")
async def reconcile_gc(body: kopf.Body, **_: Any) -> None:
    await sync_gc(plain(body))


async def _resync_gc(gc: Obj, logger: logging.Logger | kopf.Logger) -> None:
    try:
        await sync_gc(gc)
    except (kopf.PermanentError, kopf.TemporaryError) as e:
        logger.warning("Reconciling GarbageCollection %s: %s", gc["metadata"]["name"], e)


# --------------------------------------------------------------------------- periodic resync
#
# Not kopf timers: kopf puts a finalizer on every resource with a timer, and a finalizer blocks
# deletion whenever the operator is not running. The resources seen (by the watches kopf already
# runs, so within the namespaces served) are remembered, and one task resyncs them all.

_known: dict[str, tuple[str, str, str]] = {}  # uid -> (kind, namespace, name)
_resync_task: asyncio.Task[None] | None = None


@kopf.on.event(GROUP, VERSION, "registries", id="remember-registries")
@kopf.on.event(GROUP, VERSION, "garbagecollections", id="remember-garbagecollections")
async def remember(body: kopf.Body, type: str | None, **_: Any) -> None:
    meta = body.get("metadata") or {}
    if type == "DELETED":
        _known.pop(str(meta.get("uid")), None)
    else:
        _known[str(meta.get("uid"))] = (
            str(body.get("kind")),
            str(meta.get("namespace")),
            str(meta.get("name")),
        )


async def resync_all(logger: logging.Logger | kopf.Logger = log) -> None:
    """Reconcile every Registry and GarbageCollection seen: repairs what no event reported."""
    for uid, (kind, namespace, name) in list(_known.items()):
        try:
            obj = await kube().get(kind, namespace, name)
        except ApiError as e:
            logger.warning("Resync: reading %s %s/%s failed: %s", kind, namespace, name, e)
            continue
        if obj is None or obj["metadata"].get("uid") != uid:
            _known.pop(uid, None)
            continue
        if obj["metadata"].get("deletionTimestamp"):
            continue
        if kind == "Registry":
            await _resync_registry(obj, logger)
        else:
            await _resync_gc(obj, logger)


async def _resync_forever(interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await resync_all()
        except Exception:  # never let one bad pass end the loop
            log.exception("Periodic resync failed")


async def _owner_gc(obj: Obj, namespace: str) -> Obj | None:
    gc_name = ((obj.get("metadata") or {}).get("labels") or {}).get(GC_LABEL)
    if not gc_name:
        return None
    try:
        gc = await kube().get("GarbageCollection", namespace, gc_name)
    except ApiError as e:
        raise temporary(e, "reading the GarbageCollection") from e
    if gc is None or gc["metadata"].get("deletionTimestamp") or not owned_by(obj, gc):
        return None
    return gc


@kopf.on.event(
    "batch",
    "v1",
    "cronjobs",
    labels={"app.kubernetes.io/managed-by": MANAGED_BY, GC_LABEL: kopf.PRESENT},
)
async def gc_cronjob_changed(
    body: kopf.Body, namespace: str | None, type: str | None, logger: kopf.Logger, **_: Any
) -> None:
    """Drift repair for a GarbageCollection's CronJob."""
    assert namespace is not None  # namespaced resources
    cron = plain(body)
    gc = await _owner_gc(cron, namespace)
    if gc is None:
        return
    if type != "DELETED":
        try:
            registry_name = defaulted_spec("GarbageCollection", gc.get("spec"))["registryRef"]
            registry = await kube().get("Registry", namespace, registry_name["name"])
            if registry is None:
                return
            desired = build_gc_workload(gc, registry, default_image())
        except (SpecError, ApiError):
            return  # the GarbageCollection's own handler reports it
        if desired["kind"] != "CronJob" or not drift(desired, cron):
            return
    logger.info("CronJob %s changed: reconciling its GarbageCollection", cron["metadata"]["name"])
    await _resync_gc(gc, logger)


@kopf.on.event("batch", "v1", "jobs", labels={GC_LABEL: kopf.PRESENT})
async def gc_job_changed(body: kopf.Body, namespace: str | None, type: str, **_: Any) -> None:
    """Record a GC Job's outcome (and ``berth gc --json`` counts) in its GarbageCollection."""
    assert namespace is not None  # namespaced resources
    if type == "DELETED":
        return  # a one-shot Job is never re-created; its result is already recorded
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
    status = gc.get("status") or {}
    last = status.get("lastRun") or {}
    if last.get("jobName") != run["jobName"] and str(last.get("startTime", "")) > str(
        run.get("startTime", "")
    ):
        return  # an older job's news
    update: Obj = {"lastRun": run}
    if status.get("jobKind") == "Job" and status.get("jobName") == run["jobName"]:
        spec = defaulted_spec("GarbageCollection", gc.get("spec"))
        update["conditions"] = gc_conditions(
            status.get("conditions") or [],
            gc["metadata"].get("generation"),
            "Job",
            run["jobName"],
            bool(spec["suspend"]),
            run,
            now_iso(),
        )
    await _write_gc_status(gc, update)
