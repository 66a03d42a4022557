"""The operator keeps the cluster in the declared state (issue 11, reconciliation): drift repair,
ownership, GarbageCollections following their Registry, one-shot runs, autoscaling hand-over and
apply errors in status -- the real kopf operator against the emulator."""

from __future__ import annotations

import asyncio
from typing import Any

from k8s_emulator import eventually
from test_operator_kopf import (
    GCS,
    NS,
    REG,
    S3_SPEC,
    condition,
    create,
    live,
    patch,
    registry,
    sent,
    sent_replicas,
    settled,
    url,
)

from conftest import operator_running

DEP, SVC, CM = "apps/v1/deployments", "v1/services", "v1/configmaps"
HPA, PDB = "autoscaling/v2/horizontalpodautoscalers", "policy/v1/poddisruptionbudgets"
PVC, CRON, JOB = "v1/persistentvolumeclaims", "batch/v1/cronjobs", "batch/v1/jobs"
S3 = {"driver": "s3", "s3": {"bucket": "images", "credentialsSecret": {"name": "s3-creds"}}}


def gc_body(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "GarbageCollection",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"registryRef": {"name": "reg"}, **spec},
    }


def uid(obj: dict[str, Any] | None) -> str:
    return str((obj or {}).get("metadata", {}).get("uid"))


def jobs_of(api: Any, gc: str) -> list[dict[str, Any]]:
    return [
        o.raw
        for (res, _, _), o in api.objects.items()
        if res.plural == "jobs"
        and not o.deleted
        and o.raw["metadata"].get("labels", {}).get("berth.dev/garbage-collection") == gc
    ]


def with_condition(api: Any, resource: str, name: str, type_: str, **want: str) -> Any:
    obj = live(api, resource, name)
    c = condition(obj, type_)
    return obj if c and all(c.get(k) == v for k, v in want.items()) else None


async def delete(api: Any, resource: str, name: str) -> None:
    rsp = await api.delete(url(resource, name))
    assert rsp.status == 200, await rsp.text()


# --------------------------------------------------------------------------- 1. drift repair


async def test_deleted_owned_objects_come_back(operator: Any) -> None:
    api = operator
    await create(api, REG, registry(**S3_SPEC))
    children = {CM: "reg-config", SVC: "reg", DEP: "reg", HPA: "reg", PDB: "reg"}
    before = {
        r: uid(await eventually(lambda r=r, n=n: live(api, r, n))) for r, n in children.items()
    }
    for resource, name in children.items():
        await delete(api, resource, name)
        recreated = await eventually(lambda r=resource, n=name: live(api, r, n))
        assert uid(recreated) != before[resource], resource
        assert recreated["metadata"]["ownerReferences"][0]["name"] == "reg"


async def test_edited_owned_objects_are_patched_back(operator: Any) -> None:
    api = operator
    await create(api, REG, registry(**S3_SPEC))
    config = await eventually(lambda: live(api, CM, "reg-config"))
    text = config["data"]["config.yaml"]
    await eventually(lambda: live(api, DEP, "reg"))
    await eventually(lambda: live(api, SVC, "reg"))

    await patch(api, CM, "reg-config", {"data": {"config.yaml": "storage: {driver: nothing}\n"}})
    await eventually(lambda: live(api, CM, "reg-config")["data"]["config.yaml"] == text)  # type: ignore[index]

    selector = {"app.kubernetes.io/instance": "someone-else"}
    await patch(api, SVC, "reg", {"spec": {"selector": selector}})
    await eventually(
        lambda: (
            live(api, SVC, "reg")["spec"]["selector"]["app.kubernetes.io/instance"]  # type: ignore[index]
            == "reg"
        )
    )
    container = {"name": "registry", "image": "evil:1"}
    dep = live(api, DEP, "reg")
    assert dep is not None
    containers = [container, *dep["spec"]["template"]["spec"]["containers"][1:]]
    await patch(api, DEP, "reg", {"spec": {"template": {"spec": {"containers": containers}}}})
    await eventually(
        lambda: (
            live(api, DEP, "reg")["spec"]["template"]["spec"]["containers"][0]["image"]  # type: ignore[index]
            == "berth:test"
        )
    )
    # What the operator does not set (a label of someone else's) is left alone: no patch loop.
    await patch(api, SVC, "reg", {"metadata": {"annotations": {"team": "x"}}})
    versions = await settled(lambda: len(api.objects[SVC, NS, "reg"].history))
    assert live(api, SVC, "reg")["metadata"]["annotations"]["team"] == "x"  # type: ignore[index]
    await asyncio.sleep(1)
    assert len(api.objects[SVC, NS, "reg"].history) == versions


async def test_a_deleted_data_volume_claim_is_created_again(operator: Any) -> None:
    api = operator
    await create(api, REG, registry("fs"))
    before = await eventually(lambda: live(api, PVC, "fs-data"))
    await delete(api, PVC, "fs-data")
    after = await eventually(lambda: live(api, PVC, "fs-data"))
    assert uid(after) != uid(before) and "ownerReferences" not in after["metadata"]


async def test_periodic_resync_repairs_what_no_event_reported(
    fast_resync: float, operator: Any
) -> None:
    """A Service deleted while the watch was expired (410): the re-list does not have it, no
    DELETED event ever comes; the periodic resync re-creates it."""
    api = operator
    await create(api, REG, registry(**S3_SPEC))
    before = uid(await eventually(lambda: live(api, SVC, "reg")))
    await api.delete_unseen(SVC, NS, "reg")
    assert live(api, SVC, "reg") is None
    after = await eventually(lambda: live(api, SVC, "reg"), within=8)
    assert uid(after) != before
    # The watches came back after the 410: an edit is repaired by its event again.
    await patch(api, CM, "reg-config", {"data": {"config.yaml": "x: 1\n"}})
    await eventually(lambda: "x: 1" not in live(api, CM, "reg-config")["data"]["config.yaml"])  # type: ignore[index]


async def test_watch_expiry_does_not_stop_drift_repair(operator: Any) -> None:
    api = operator
    await create(api, REG, registry(**S3_SPEC))
    await eventually(lambda: live(api, PDB, "reg"))

    def pdb_watches() -> int:
        return sum(
            1
            for r in api.client_requests()
            if r.params.get("watch") == "true" and r.url.path.endswith("/poddisruptionbudgets")
        )

    before = pdb_watches()
    await api.expire_watches()
    # A delete between the 410 and the new watch is only seen by the periodic resync: wait
    # until the operator watches again, as a real watch would be re-established.
    await eventually(lambda: pdb_watches() > before)
    await asyncio.sleep(0.2)
    await delete(api, PDB, "reg")
    await eventually(lambda: live(api, PDB, "reg"))


async def test_a_conflict_is_retried(operator: Any) -> None:
    api = operator
    await create(api, REG, registry(**S3_SPEC))
    await eventually(lambda: live(api, DEP, "reg"))
    api.inject("PATCH", "deployments", 409, name="reg")
    await patch(api, REG, "reg", {"spec": {"image": "berth:2"}})
    await eventually(
        lambda: (
            live(api, DEP, "reg")["spec"]["template"]["spec"]["containers"][0]["image"]  # type: ignore[index]
            == "berth:2"
        )
    )
    assert not api.injected[0].times  # the conflict did happen


async def test_a_garbage_collection_cronjob_is_repaired(operator: Any) -> None:
    api = operator
    await create(api, REG, registry(**S3_SPEC))
    await create(api, GCS, gc_body("nightly", schedule="0 3 * * *"))
    first = await eventually(lambda: live(api, CRON, "nightly-gc"))
    await patch(api, CRON, "nightly-gc", {"spec": {"schedule": "* * * * *"}})
    await eventually(lambda: live(api, CRON, "nightly-gc")["spec"]["schedule"] == "0 3 * * *")  # type: ignore[index]
    await delete(api, CRON, "nightly-gc")
    again = await eventually(lambda: live(api, CRON, "nightly-gc"))
    assert uid(again) != uid(first)


# --------------------------------------------------------------------------- 2. ownership


async def test_an_object_it_did_not_create_is_left_alone_and_reported(
    fast_resync: float, operator: Any
) -> None:
    api = operator
    mine = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x-config"}}
    await create(api, CM, {**mine, "data": {"user": "data"}})
    await create(api, REG, registry("x", **{"storage": S3}))
    reg = await eventually(
        lambda: with_condition(api, REG, "x", "Degraded", status="True", reason="NameConflict")
    )
    assert "ConfigMap x-config" in condition(reg, "Degraded")["message"]
    assert condition(reg, "Ready")["status"] == "False"
    await eventually(lambda: live(api, DEP, "x"))  # the rest is applied
    user = live(api, CM, "x-config")
    assert user is not None and user["data"] == {"user": "data"}
    assert "ownerReferences" not in user["metadata"]
    assert not [b for b in sent(api, "configmaps", "x-config")], "the operator wrote to it"

    # Deleting the Registry leaves the user's ConfigMap (it was never owned).
    await delete(api, REG, "x")
    await eventually(lambda: live(api, DEP, "x") is None)
    assert live(api, CM, "x-config") is not None

    # The name is freed: a new Registry x takes it (the resync retries meanwhile).
    await create(api, REG, registry("x", **{"storage": S3}))
    await eventually(
        lambda: with_condition(api, REG, "x", "Degraded", reason="NameConflict") is not None
    )
    await delete(api, CM, "x-config")
    await eventually(
        lambda: (c := live(api, CM, "x-config")) and c["metadata"].get("ownerReferences")
    )
    await eventually(lambda: with_condition(api, REG, "x", "Degraded", status="False"))


async def test_a_foreign_cronjob_is_not_taken_over(operator: Any) -> None:
    api = operator
    await create(api, REG, registry(**S3_SPEC))
    foreign = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "nightly-gc"},
        "spec": {"schedule": "5 5 * * *", "jobTemplate": {"spec": {}}},
    }
    await create(api, CRON, foreign)
    await create(api, GCS, gc_body("nightly", schedule="0 3 * * *"))
    gc = await eventually(
        lambda: with_condition(api, GCS, "nightly", "Degraded", reason="NameConflict")
    )
    assert "CronJob nightly-gc" in condition(gc, "Degraded")["message"]
    assert live(api, CRON, "nightly-gc")["spec"]["schedule"] == "5 5 * * *"  # type: ignore[index]


# --------------------------------------------------------------------------- 3. GC and Registry


async def test_garbage_collection_follows_its_registry(operator: Any) -> None:
    api = operator
    await create(api, REG, registry(**S3_SPEC))
    await create(api, GCS, gc_body("nightly", schedule="0 3 * * *"))

    def pod() -> Any:
        return live(api, CRON, "nightly-gc")["spec"]["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[index]

    await eventually(lambda: pod()["containers"][0]["image"] == "berth:test")
    s3 = {"s3": {"credentialsSecret": {"name": "rotated"}}}
    await patch(
        api, REG, "reg", {"spec": {"image": "berth:2", "serviceAccountName": "irsa", "storage": s3}}
    )
    await eventually(lambda: pod()["containers"][0]["image"] == "berth:2")
    await eventually(lambda: pod().get("serviceAccountName") == "irsa")
    env = {e["name"]: e for e in pod()["containers"][0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "rotated"


async def test_a_garbage_collection_waiting_for_its_registry_starts_with_it(operator: Any) -> None:
    api = operator
    await create(api, GCS, gc_body("early", schedule="0 3 * * *"))
    await eventually(
        lambda: with_condition(api, GCS, "early", "Degraded", reason="RegistryNotFound")
    )
    await create(api, REG, registry(**S3_SPEC))
    # Sooner than the GarbageCollection's own 30 s retry: the Registry brings it along.
    await eventually(lambda: live(api, CRON, "early-gc"), within=5)
    await eventually(lambda: with_condition(api, GCS, "early", "Ready", status="True"))


# --------------------------------------------------------------------------- 4. one-shot GC


async def finish(api: Any, job: str) -> None:
    done = {
        "startTime": "2026-01-01T03:00:00Z",
        "completionTime": "2026-01-01T03:01:00Z",
        "succeeded": 1,
        "conditions": [{"type": "Complete", "status": "True"}],
    }
    await patch(api, JOB, job, {"status": done}, sub="status")


async def test_a_one_shot_collection_runs_exactly_once(emulator: Any) -> None:
    api = emulator
    async with operator_running(api):
        await create(api, REG, registry(**S3_SPEC))
        await create(api, GCS, gc_body("once", deleteUntagged=True))
        [job] = await eventually(lambda: jobs_of(api, "once"))
        name = job["metadata"]["name"]
        spec = job["spec"]
        assert spec["ttlSecondsAfterFinished"] == 86400 and spec["activeDeadlineSeconds"] == 21600
        resources = spec["template"]["spec"]["containers"][0]["resources"]
        assert resources == {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "1Gi"},
        }
        await finish(api, name)
        gc = await eventually(lambda: with_condition(api, GCS, "once", "Ready", reason="Completed"))
        assert gc["status"]["lastRun"]["result"] == "Succeeded"
        assert gc["status"]["jobName"] == name

        # The registry's image changes: the GC follows, but the one run is not repeated.
        await patch(
            api, REG, "reg", {"spec": {"image": "berth:2", "storage": {"s3": {"region": "x"}}}}
        )
        await asyncio.sleep(1.5)
        assert [j["metadata"]["name"] for j in jobs_of(api, "once")] == [name]

        # ttlSecondsAfterFinished removes the Job: it is not created again.
        await delete(api, JOB, name)
        await asyncio.sleep(1.5)
        assert jobs_of(api, "once") == []

    # An operator restart (resume handlers, the Registry's new image): still not run again.
    async with operator_running(api):
        await asyncio.sleep(2)
        assert jobs_of(api, "once") == []
        assert with_condition(api, GCS, "once", "Ready", reason="Completed")

        # A new run is a spec change of what it does (here: a dry run): exactly one new Job.
        await patch(api, GCS, "once", {"spec": {"dryRun": True}})
        [job2] = await eventually(lambda: jobs_of(api, "once"))
        assert job2["metadata"]["name"] != name
        await asyncio.sleep(1)
        assert len(jobs_of(api, "once")) == 1


async def test_suspend_pauses_without_renaming(operator: Any) -> None:
    api = operator
    await create(api, REG, registry(**S3_SPEC))
    await create(api, GCS, gc_body("once"))
    [job] = await eventually(lambda: jobs_of(api, "once"))
    await patch(api, GCS, "once", {"spec": {"suspend": True}})
    await eventually(lambda: live(api, JOB, job["metadata"]["name"])["spec"]["suspend"] is True)  # type: ignore[index]
    await eventually(lambda: with_condition(api, GCS, "once", "Ready", reason="Suspended"))
    assert [j["metadata"]["name"] for j in jobs_of(api, "once")] == [job["metadata"]["name"]]

    await create(api, GCS, gc_body("nightly", schedule="0 3 * * *"))
    first = await eventually(lambda: live(api, CRON, "nightly-gc"))
    await patch(api, GCS, "nightly", {"spec": {"suspend": True}})
    cron = await eventually(
        lambda: (c := live(api, CRON, "nightly-gc")) and c["spec"]["suspend"] is True and c
    )
    assert uid(cron) == uid(first)
    await eventually(lambda: with_condition(api, GCS, "nightly", "Ready", reason="Suspended"))


# --------------------------------------------------------------------------- 5. autoscaling


async def test_turning_autoscaling_on_keeps_the_pod_count(operator: Any) -> None:
    api = operator
    await create(api, REG, registry(storage=S3, replicas=3))
    await eventually(lambda: live(api, DEP, "reg")["spec"]["replicas"] == 3)  # type: ignore[index]
    await patch(api, REG, "reg", {"spec": {"autoscaling": {"enabled": True, "minReplicas": 2}}})
    await eventually(lambda: live(api, HPA, "reg"))
    await settled(lambda: len(api.objects[DEP, NS, "reg"].history))
    assert live(api, DEP, "reg")["spec"]["replicas"] == 3  # type: ignore[index]  # not 1
    assert None not in sent_replicas(api, "reg")
    # The HPA scales; drift repair and resyncs leave its count alone.
    await patch(api, DEP, "reg", {"spec": {"replicas": 7}})
    await asyncio.sleep(1)
    assert live(api, DEP, "reg")["spec"]["replicas"] == 7  # type: ignore[index]
    # Off again: the operator's replica count is back.
    await patch(api, REG, "reg", {"spec": {"autoscaling": {"enabled": False}, "replicas": 4}})
    await eventually(lambda: live(api, DEP, "reg")["spec"]["replicas"] == 4)  # type: ignore[index]


# --------------------------------------------------------------------------- 6. apply errors


async def test_garbage_collection_apply_errors_reach_status(operator: Any) -> None:
    api = operator
    await create(api, REG, registry(**S3_SPEC))
    cases = {
        "badcron": ({"schedule": "0 3 * *"}, "spec.schedule"),
        "badzone": ({"schedule": "0 3 * * *", "timeZone": "Mars/Olympus"}, "spec.timeZone"),
        "a" * 50: ({"schedule": "0 3 * * *"}, "must be no more than 52 characters"),
    }
    for name, (spec, _) in cases.items():
        await create(api, GCS, gc_body(name, **spec))
    for name, (_, message) in cases.items():
        gc = await eventually(
            lambda n=name: with_condition(api, GCS, n, "Degraded", reason="ApplyFailed")
        )
        assert message in condition(gc, "Degraded")["message"], condition(gc, "Degraded")
        assert "422" in condition(gc, "Degraded")["message"]
        assert condition(gc, "Ready")["status"] == "False"

    # Fixed: Ready again.
    await patch(api, GCS, "badcron", {"spec": {"schedule": "0 3 * * 1"}})
    await eventually(lambda: with_condition(api, GCS, "badcron", "Ready", status="True"))


async def test_registry_apply_errors_reach_status(operator: Any) -> None:
    api = operator
    message = 'admission webhook "policy.example.com" denied the request: no latest tags'
    api.inject("POST", "deployments", 422, message=message, times=1000)
    await create(api, REG, registry(**S3_SPEC))
    reg = await eventually(
        lambda: with_condition(api, REG, "reg", "Degraded", reason="ApplyFailed")
    )
    assert message in condition(reg, "Degraded")["message"]
    assert condition(reg, "Ready")["status"] == "False"
    api.injected.clear()
    await patch(api, REG, "reg", {"spec": {"image": "berth:1.0"}})
    await eventually(lambda: live(api, DEP, "reg"))
    await eventually(lambda: with_condition(api, REG, "reg", "Degraded", status="False"))


# --------------------------------------------------------------------------- 10. watches


async def test_watches_of_owned_kinds_are_filtered_by_the_api_server(operator: Any) -> None:
    """Point 10: the operator asks the API server for its own objects only (labelSelector on
    list and watch), instead of streaming every ConfigMap or Job of the cluster."""
    api = operator
    await create(api, REG, registry(**S3_SPEC))
    await eventually(lambda: live(api, DEP, "reg"))
    selected: dict[str, set[str]] = {}
    for request in api.client_requests():
        if request.method == "GET" and request.params.get("watch") == "true":
            plural = request.url.path.rstrip("/").rsplit("/", 1)[-1]
            selected.setdefault(plural, set()).add(request.params.get("labelSelector", ""))
    from berth_operator.handlers import WATCH_SELECTORS

    for (_, plural), selector in WATCH_SELECTORS.items():
        assert selector, plural
        assert selected.get(plural) == {selector}, (plural, selected.get(plural))
