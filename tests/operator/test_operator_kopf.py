"""The real kopf operator (``berth_operator.main.run``) against the fixed kmock API emulator."""

from __future__ import annotations

import asyncio
import json
import shlex
from typing import Any

from k8s_emulator import eventually

REG = "berth.dev/v1alpha1/registries"
GCS = "berth.dev/v1alpha1/garbagecollections"
NS = "default"
CHECKSUM = "berth.dev/config-checksum"
SUMMARY = {"blobs_deleted": 4, "manifests_deleted": 2, "bytes_freed": 1024}


def url(resource: str, name: str | None = None, sub: str | None = None) -> str:
    prefix, plural = resource.rsplit("/", 1)
    base = f"/api/{prefix}" if prefix == "v1" else f"/apis/{prefix}"
    path = f"{base}/namespaces/{NS}/{plural}"
    return path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


def registry(name: str = "reg", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "Registry",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def sent(api: Any, plural: str, name: str) -> list[dict[str, Any]]:
    """The bodies of every create or patch of ``plural``/``name`` the operator sent (as sent:
    the emulator rewrites ``request.data`` in place as the API server would)."""
    bodies = []
    for request in api.client_requests():
        if (
            request.resource is not None
            and request.resource.plural == plural
            and request.method in ("POST", "PATCH")
            and request.body
        ):
            data = json.loads(request.body)
            if isinstance(data, dict) and name in (
                request.name,
                (data.get("metadata") or {}).get("name"),
            ):
                bodies.append(data)
    return bodies


def sent_replicas(api: Any, name: str) -> list[Any]:
    """``spec.replicas`` in every create or patch of Deployment ``name`` the operator sent."""
    return [
        body["spec"]["replicas"]
        for body in sent(api, "deployments", name)
        if "replicas" in (body.get("spec") or {})
    ]


def live(api: Any, resource: str, name: str) -> dict[str, Any] | None:
    try:
        obj = api.objects[resource, NS, name]
    except KeyError:
        return None
    return None if obj.deleted else obj.raw  # type: ignore[no-any-return]


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c  # type: ignore[no-any-return]
    return {}


async def settled(measure: Any, quiet: float = 1.0, within: float = 6.0) -> Any:
    """Wait until ``measure()`` stops changing for ``quiet`` seconds; return its value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    value, since = measure(), loop.time()
    while loop.time() < deadline:
        await asyncio.sleep(0.1)
        current = measure()
        if current != value:
            value, since = current, loop.time()
        elif loop.time() - since >= quiet:
            return value
    raise AssertionError(f"still changing after {within}s")


async def create(api: Any, resource: str, body: dict[str, Any]) -> None:
    rsp = await api.post(url(resource), json=body)
    assert rsp.status in (200, 201), await rsp.text()


async def patch(api: Any, resource: str, name: str, body: Any, sub: str | None = None) -> None:
    headers = {"Content-Type": "application/merge-patch+json"}
    rsp = await api.patch(url(resource, name, sub), json=body, headers=headers)
    assert rsp.status == 200, await rsp.text()


S3_SPEC: dict[str, Any] = {
    "storage": {
        "driver": "s3",
        "s3": {"bucket": "images", "credentialsSecret": {"name": "s3-creds"}},
    },
    "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 5},
}

CHILDREN = {
    "v1/configmaps": "reg-config",
    "v1/services": "reg",
    "apps/v1/deployments": "reg",
    "autoscaling/v2/horizontalpodautoscalers": "reg",
    "policy/v1/poddisruptionbudgets": "reg",
}


async def test_registry_lifecycle(operator: Any) -> None:
    api = operator
    await create(api, REG, registry(**S3_SPEC))

    # Create: the children appear, owned by the Registry; the status turns Progressing.
    for resource, name in CHILDREN.items():
        obj = await eventually(lambda r=resource, n=name: live(api, r, n))
        owner = obj["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "Registry" and owner["name"] == "reg" and owner["controller"]
    reg = await eventually(
        lambda: (
            (r := live(api, REG, "reg"))
            and condition(r, "Progressing")["status"] == "True"
            and "url" in r["status"]
            and r
        )
    )
    assert reg["status"]["url"] == "http://reg.default.svc:5000"
    assert condition(reg, "Degraded")["status"] == "False"
    assert condition(reg, "Ready")["status"] == "False"
    assert live(api, "v1/persistentvolumeclaims", "reg-data") is None  # s3: no volume
    deployment = live(api, "apps/v1/deployments", "reg")
    assert deployment is not None
    # The HPA owns the replica count: the operator never sends it (the API server defaults it).
    assert deployment["spec"]["replicas"] == 1
    assert not sent_replicas(api, "reg")
    before = deployment["spec"]["template"]["metadata"]["annotations"][CHECKSUM]
    assert reg["status"]["configChecksum"] == before

    # The HPA scales the Deployment, which becomes available: the Registry turns Ready.
    await patch(api, "apps/v1/deployments", "reg", {"spec": {"replicas": 2}})
    await patch(
        api,
        "apps/v1/deployments",
        "reg",
        {
            "status": {
                "observedGeneration": 99,
                "replicas": 2,
                "readyReplicas": 2,
                "updatedReplicas": 2,
                "availableReplicas": 2,
            },
        },
        sub="status",
    )
    reg = await eventually(
        lambda: (r := live(api, REG, "reg")) and condition(r, "Ready")["status"] == "True" and r
    )
    assert condition(reg, "Progressing")["status"] == "False"
    assert reg["status"]["readyReplicas"] == 2

    # Update: a config-relevant change patches the Deployment with a new checksum.
    await patch(api, REG, "reg", {"spec": {"storage": {"redirect": {"expirySeconds": 600}}}})

    def rolled() -> bool:
        dep = live(api, "apps/v1/deployments", "reg")
        return bool(dep) and dep["spec"]["template"]["metadata"]["annotations"][CHECKSUM] != before  # type: ignore[index]

    await eventually(rolled)
    config = live(api, "v1/configmaps", "reg-config")
    assert config is not None and "redirect_expiry_seconds: 600" in config["data"]["config.yaml"]

    # Turning autoscaling off removes the HPA and sets the replica count.
    await patch(api, REG, "reg", {"spec": {"autoscaling": {"enabled": False}, "replicas": 3}})
    await eventually(lambda: live(api, "autoscaling/v2/horizontalpodautoscalers", "reg") is None)
    dep = await eventually(
        lambda: (
            (d := live(api, "apps/v1/deployments", "reg")) and d["spec"].get("replicas") == 3 and d
        )
    )
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "berth:test"

    # Delete: no finalizer holds the Registry; its children go by their owner references.
    assert not live(api, REG, "reg")["metadata"].get("finalizers")  # type: ignore[index]
    rsp = await api.delete(url(REG, "reg"))
    assert rsp.status == 200, await rsp.text()
    await eventually(lambda: live(api, REG, "reg") is None)
    for resource, name in CHILDREN.items():
        if resource.startswith("autoscaling"):
            continue
        await eventually(lambda r=resource, n=name: live(api, r, n) is None)


async def test_filesystem_registry_keeps_its_volume(operator: Any) -> None:
    api = operator
    await create(api, REG, registry("fs"))
    pvc = await eventually(lambda: live(api, "v1/persistentvolumeclaims", "fs-data"))
    assert "ownerReferences" not in pvc["metadata"]
    dep = await eventually(lambda: live(api, "apps/v1/deployments", "fs"))
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    rsp = await api.delete(url(REG, "fs"))
    assert rsp.status == 200
    await eventually(lambda: live(api, "apps/v1/deployments", "fs") is None)
    assert live(api, "v1/persistentvolumeclaims", "fs-data") is not None  # data is never deleted


async def test_bad_spec_is_degraded_without_a_crash_loop(operator: Any) -> None:
    api = operator
    await create(api, REG, registry("bad", storage={"driver": "s3", "s3": {}}))
    reg = await eventually(
        lambda: (
            (r := live(api, REG, "bad")) and condition(r, "Degraded").get("status") == "True" and r
        )
    )
    degraded = condition(reg, "Degraded")
    assert degraded["reason"] == "InvalidSpec"
    assert "storage.s3.bucket is required" in degraded["message"]
    assert condition(reg, "Ready")["status"] == "False"
    assert live(api, "apps/v1/deployments", "bad") is None
    # No retry loop: once the failure is reported (and kopf has recorded it), nothing changes.
    versions = await settled(lambda: len(api.objects[REG, NS, "bad"].history))
    await asyncio.sleep(1.5)
    assert len(api.objects[REG, NS, "bad"].history) == versions

    # Fixing the spec recovers.
    await patch(api, REG, "bad", {"spec": {"storage": {"s3": {"bucket": "b"}}}})
    await eventually(lambda: live(api, "apps/v1/deployments", "bad"))
    reg = await eventually(
        lambda: (r := live(api, REG, "bad")) and condition(r, "Degraded")["status"] == "False" and r
    )
    assert condition(reg, "Degraded")["reason"] == "AsExpected"


async def test_garbage_collection_cronjob_and_job(operator: Any) -> None:
    api = operator
    await create(api, REG, registry(**S3_SPEC))
    await create(
        api,
        GCS,
        {
            "apiVersion": "berth.dev/v1alpha1",
            "kind": "GarbageCollection",
            "metadata": {"name": "nightly", "namespace": NS},
            "spec": {
                "registryRef": {"name": "reg"},
                "schedule": "0 3 * * *",
                "deleteUntagged": True,
                "gracePeriod": "2h",
            },
        },
    )
    cron = await eventually(lambda: live(api, "batch/v1/cronjobs", "nightly-gc"))
    assert cron["spec"]["schedule"] == "0 3 * * *"
    assert cron["metadata"]["ownerReferences"][0]["kind"] == "GarbageCollection"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    script = pod["containers"][0]["command"][-1]
    argv = shlex.split(script.split(">")[0])
    assert argv == [
        "berth",
        "gc",
        "--config",
        "/etc/berth/config.yaml",
        "--grace-period",
        "2h",
        "--delete-untagged",
        "--json",
    ]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
    gc = await eventually(
        lambda: (
            (g := live(api, GCS, "nightly")) and condition(g, "Ready").get("status") == "True" and g
        )
    )
    assert gc["status"]["jobKind"] == "CronJob"

    # A finished job's result and counts (from the termination message) land in the status.
    await create(
        api,
        "batch/v1/jobs",
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": "nightly-gc-1",
                "namespace": NS,
                "labels": {"berth.dev/garbage-collection": "nightly"},
            },
            "spec": {},
        },
    )
    await create(
        api,
        "v1/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "nightly-gc-1-x",
                "namespace": NS,
                "labels": {"job-name": "nightly-gc-1"},
            },
            "status": {
                "containerStatuses": [
                    {
                        "name": "gc",
                        "state": {
                            "terminated": {
                                "exitCode": 0,
                                "message": json.dumps(SUMMARY),
                            }
                        },
                    }
                ]
            },
        },
    )
    await patch(
        api,
        "batch/v1/jobs",
        "nightly-gc-1",
        {
            "status": {
                "startTime": "2026-01-01T03:00:00Z",
                "completionTime": "2026-01-01T03:01:00Z",
                "succeeded": 1,
                "conditions": [{"type": "Complete", "status": "True"}],
            }
        },
        sub="status",
    )
    gc = await eventually(
        lambda: (
            (g := live(api, GCS, "nightly")) and g["status"].get("lastRun", {}).get("counts") and g
        )
    )
    assert gc["status"]["lastRun"]["result"] == "Succeeded"
    assert gc["status"]["lastRun"]["counts"]["blobs_deleted"] == 4

    # Without a schedule: a one-shot Job, and the CronJob goes.
    await patch(api, GCS, "nightly", {"spec": {"schedule": None, "dryRun": True}})
    await eventually(lambda: live(api, "batch/v1/cronjobs", "nightly-gc") is None)
    jobs = await eventually(
        lambda: [
            o.raw
            for (res, _, name), o in api.objects.items()
            if res.plural == "jobs"
            and name.startswith("nightly-gc-")
            and not o.deleted
            and name != "nightly-gc-1"
        ]
    )
    assert "--dry-run" in jobs[0]["spec"]["template"]["spec"]["containers"][0]["command"][-1]


async def test_garbage_collection_of_a_missing_registry_waits(operator: Any) -> None:
    api = operator
    await create(
        api,
        GCS,
        {
            "apiVersion": "berth.dev/v1alpha1",
            "kind": "GarbageCollection",
            "metadata": {"name": "orphan", "namespace": NS},
            "spec": {"registryRef": {"name": "nope"}},
        },
    )
    gc = await eventually(
        lambda: (
            (g := live(api, GCS, "orphan"))
            and condition(g, "Degraded").get("status") == "True"
            and g
        )
    )
    assert condition(gc, "Degraded")["reason"] == "RegistryNotFound"


async def test_service_monitor_only_where_its_crd_exists(operator: Any) -> None:
    import kmock

    api = operator
    spec = {"storage": {"driver": "s3", "s3": {"bucket": "b"}}, "serviceMonitor": {"enabled": True}}
    await create(api, REG, registry("mon", **spec))
    await eventually(lambda: live(api, "apps/v1/deployments", "mon"))
    assert live(api, "monitoring.coreos.com/v1/servicemonitors", "mon") is None

    # The Prometheus Operator's CRD appears; the next reconciliation adds the ServiceMonitor.
    api.resources["monitoring.coreos.com/v1/servicemonitors"] = kmock.ResourceInfo(
        kind="ServiceMonitor", namespaced=True, verbs={"get", "create", "patch", "delete"}
    )
    await patch(api, REG, "mon", {"spec": {"serviceMonitor": {"interval": "15s"}}})
    monitor = await eventually(lambda: live(api, "monitoring.coreos.com/v1/servicemonitors", "mon"))
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s"}
    ]
