"""Pure parts of reconciliation: one-shot Job names, ownership, the patch left to the HPA."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from berth_operator.builders import build_gc_workload, build_registry_objects
from berth_operator.kube import drift, ownership, with_last_applied
from berth_operator.status import gc_conditions

IMAGE = "berth:test"


def body(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1},
        "spec": copy.deepcopy(spec),
    }


REGISTRY = body("Registry", "reg", {"storage": {"driver": "s3", "s3": {"bucket": "b"}}})


def job_name(gc_spec: dict[str, Any], registry: dict[str, Any] = REGISTRY) -> str:
    job = build_gc_workload(body("GarbageCollection", "once", gc_spec), registry, IMAGE)
    assert job["kind"] == "Job"
    return str(job["metadata"]["name"])


def test_one_shot_job_name_comes_from_what_the_run_does() -> None:
    base = {"registryRef": {"name": "reg"}}
    name = job_name(base)
    other_registry = copy.deepcopy(REGISTRY)
    other_registry["spec"]["image"] = "berth:2"
    other_registry["spec"]["storage"]["s3"]["region"] = "eu-west-3"
    assert job_name(base, other_registry) == name  # a registry upgrade is not a new run
    for unrelated in (
        {"suspend": True},
        {"backoffLimit": 5},
        {"activeDeadlineSeconds": 60},
        {"ttlSecondsAfterFinished": 0},
        {"resources": {"limits": {"memory": "4Gi"}}},
    ):
        assert job_name({**base, **unrelated}) == name, unrelated
    for run in ({"dryRun": True}, {"deleteUntagged": True}, {"gracePeriod": "2h"}):
        assert job_name({**base, **run}) != name, run
    assert len(job_name(base).replace("once", "o" * 49)) <= 63


def test_jobs_are_bounded() -> None:
    gc = body("GarbageCollection", "once", {"registryRef": {"name": "reg"}, "suspend": True})
    job = build_gc_workload(gc, REGISTRY, IMAGE)
    assert job["spec"]["suspend"] is True
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400
    assert job["spec"]["activeDeadlineSeconds"] == 21600
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    cron = build_gc_workload(
        body("GarbageCollection", "n", {"registryRef": {"name": "reg"}, "schedule": "@daily"}),
        REGISTRY,
        IMAGE,
    )
    template = cron["spec"]["jobTemplate"]["spec"]
    assert template["activeDeadlineSeconds"] == 21600
    assert "ttlSecondsAfterFinished" not in template  # history limits keep a CronJob's jobs


def objects(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in build_registry_objects(body("Registry", "reg", spec), IMAGE)}


S3 = {"driver": "s3", "s3": {"bucket": "b"}}


def test_autoscaling_leaves_replicas_out_of_the_patch() -> None:
    manual = objects({"storage": S3, "replicas": 3})["Deployment"]
    live = with_last_applied(manual)
    live["spec"]["replicas"] = 3
    scaled = objects({"storage": S3, "autoscaling": {"enabled": True}})["Deployment"]
    patch = drift(scaled, live)
    assert "replicas" not in patch.get("spec", {}), patch  # not null: the server would say 1
    # Off again: the operator sets it.
    live = with_last_applied(scaled)
    live["spec"]["replicas"] = 7
    assert drift(manual, live)["spec"]["replicas"] == 3


def test_drift_ignores_what_others_set() -> None:
    service = objects({"storage": S3})["Service"]
    live = with_last_applied(service)
    live["spec"]["clusterIP"] = "10.0.0.1"
    live["metadata"]["annotations"]["team"] = "x"
    live["metadata"]["resourceVersion"] = "5"
    assert drift(service, live) == {}
    live["spec"]["ports"][0]["port"] = 80
    assert drift(service, live) == {"spec": {"ports": service["spec"]["ports"]}}


@pytest.mark.parametrize(
    ("live_meta", "holder"),
    [
        ({"ownerReferences": [{"uid": "uid-reg", "kind": "Registry", "name": "reg"}]}, None),
        (
            {
                "ownerReferences": [
                    {"uid": "u2", "kind": "Registry", "name": "reg", "controller": True}
                ]
            },
            "controlled by Registry reg",
        ),
        ({}, "not created by berth-operator for it"),
        ({"labels": {"berth.dev/registry": "reg"}}, "not created by berth-operator for it"),
        # An orphan of ours (e.g. kubectl delete --cascade=orphan): adopted.
        (
            {
                "labels": {
                    "app.kubernetes.io/managed-by": "berth-operator",
                    "berth.dev/registry": "reg",
                }
            },
            None,
        ),
        (
            {
                "labels": {
                    "app.kubernetes.io/managed-by": "berth-operator",
                    "berth.dev/registry": "x",
                }
            },
            "not created by berth-operator for it",
        ),
    ],
)
def test_ownership(live_meta: dict[str, Any], holder: str | None) -> None:
    desired = objects({"storage": S3})["ConfigMap"]
    live = {"kind": "ConfigMap", "metadata": {"name": "reg-config", **live_meta}}
    assert ownership(desired, live) == holder


def test_the_data_claim_is_ours_by_its_labels() -> None:
    pvc = objects({})["PersistentVolumeClaim"]
    assert ownership(pvc, {"metadata": {"labels": dict(pvc["metadata"]["labels"])}}) is None
    assert ownership(pvc, {"metadata": {"labels": {"app": "db"}}}) is not None


def test_gc_conditions() -> None:
    def reason(**kw: Any) -> str:
        args: dict[str, Any] = {"kind": "Job", "suspended": False, "last_run": None, **kw}
        conditions = gc_conditions(
            [], 1, args["kind"], "j", args["suspended"], args["last_run"], "t"
        )
        return next(c["reason"] for c in conditions if c["type"] == "Ready")

    assert reason() == "JobCreated"
    assert reason(suspended=True) == "Suspended"
    assert reason(kind="CronJob") == "Scheduled"
    assert reason(last_run={"jobName": "j", "result": "Running"}) == "Running"
    assert reason(last_run={"jobName": "j", "result": "Succeeded"}) == "Completed"
    assert reason(last_run={"jobName": "older", "result": "Succeeded"}) == "JobCreated"
