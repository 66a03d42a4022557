"""The fixes the operator tests rely on in kmock's emulator (see k8s_emulator.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

PATH = "/api/v1/namespaces/default/configmaps"


async def test_resource_versions_uids_and_generations(emulator: Any) -> None:
    api = emulator
    rsp = await api.post(PATH, json={"metadata": {"name": "a"}, "spec": {"x": 1}})
    created = await rsp.json()
    meta = created["metadata"]
    assert meta["uid"] and meta["generation"] == 1 and meta["namespace"] == "default"
    rsp = await api.patch(
        f"{PATH}/a",
        json={"spec": {"x": 2}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    patched = (await rsp.json())["metadata"]
    assert int(patched["resourceVersion"]) > int(meta["resourceVersion"])
    assert patched["generation"] == 2
    listing = await (await api.get(PATH)).json()
    assert listing["metadata"]["resourceVersion"] == patched["resourceVersion"]


async def test_failed_json_patch_test_is_422(emulator: Any) -> None:
    api = emulator
    await api.post(PATH, json={"metadata": {"name": "b", "finalizers": ["x"]}})
    ops = [
        {"op": "test", "path": "/metadata/finalizers/0", "value": "other"},
        {"op": "remove", "path": "/metadata/finalizers/0"},
    ]
    rsp = await api.patch(
        f"{PATH}/b", data=json.dumps(ops), headers={"Content-Type": "application/json-patch+json"}
    )
    assert rsp.status == 422


async def test_watch_resumes_without_replay(emulator: Any) -> None:
    api = emulator
    await api.post(PATH, json={"metadata": {"name": "c"}})
    listing = await (await api.get(PATH)).json()
    since = listing["metadata"]["resourceVersion"]
    events: list[dict[str, Any]] = []

    async def watch() -> None:
        async with api.get(PATH, params={"watch": "true", "resourceVersion": since}) as rsp:
            async for line in rsp.content:
                if line.strip():
                    events.append(json.loads(line))

    task = asyncio.create_task(watch())
    await asyncio.sleep(0.3)
    await api.post(PATH, json={"metadata": {"name": "d"}})
    for _ in range(50):
        if events:
            break
        await asyncio.sleep(0.05)
    task.cancel()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "d")]


async def test_owner_references_are_garbage_collected(emulator: Any) -> None:
    api = emulator
    owner = await (await api.post(PATH, json={"metadata": {"name": "owner"}})).json()
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
    }
    await api.post(PATH, json={"metadata": {"name": "child", "ownerReferences": [ref]}})
    await api.post(PATH, json={"metadata": {"name": "free"}})
    await api.delete(f"{PATH}/owner")
    assert (await api.get(f"{PATH}/child")).status == 404
    assert (await api.get(f"{PATH}/free")).status == 200


# --------------------------------------------------------------------- what a real server does

DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"
MERGE = {"Content-Type": "application/merge-patch+json"}


async def watch_events(api: Any, path: str, since: str, until: int = 1) -> list[dict[str, Any]]:
    """The events of a watch of ``path`` from ``since`` (stops after ``until`` or 2 s)."""
    events: list[dict[str, Any]] = []

    async def watch() -> None:
        async with api.get(path, params={"watch": "true", "resourceVersion": since}) as rsp:
            async for line in rsp.content:
                if line.strip():
                    events.append(json.loads(line))
                    if len(events) >= until:
                        return

    task = asyncio.create_task(watch())
    await asyncio.wait({task}, timeout=0.3)
    return events if task.done() else await _finish(task, events)


async def _finish(task: asyncio.Task[None], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    await asyncio.wait({task}, timeout=2)
    task.cancel()
    return events


async def test_deletes_are_watch_events_with_a_new_resource_version(emulator: Any) -> None:
    api = emulator
    owner = await (await api.post(PATH, json={"metadata": {"name": "o"}})).json()
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": owner["metadata"]["uid"]}
    await api.post(PATH, json={"metadata": {"name": "c", "ownerReferences": [ref]}})
    since = (await (await api.get(PATH)).json())["metadata"]["resourceVersion"]
    task = asyncio.create_task(watch_events(api, PATH, since, until=2))
    await asyncio.sleep(0.2)
    await api.delete(f"{PATH}/o")
    events = await task
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("DELETED", "o"),
        ("DELETED", "c"),  # by the garbage collector
    ]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert all(v > int(since) for v in versions) and versions[0] < versions[1]


async def test_conflicts(emulator: Any) -> None:
    api = emulator
    created = await (await api.post(PATH, json={"metadata": {"name": "x"}})).json()
    again = await api.post(PATH, json={"metadata": {"name": "x"}})
    assert again.status == 409 and (await again.json())["reason"] == "AlreadyExists"
    stale = {"metadata": {"resourceVersion": "1"}, "data": {"a": "b"}}
    rsp = await api.patch(f"{PATH}/x", json=stale, headers=MERGE)
    assert rsp.status == 409 and (await rsp.json())["reason"] == "Conflict"
    fresh = {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}}
    assert (await api.patch(f"{PATH}/x", json=fresh, headers=MERGE)).status == 200
    # Injected: the next matching request fails once, as with a concurrent writer.
    api.inject("PATCH", "configmaps", 409, name="x")
    assert (await api.patch(f"{PATH}/x", json={"data": {}}, headers=MERGE)).status == 409
    assert (await api.patch(f"{PATH}/x", json={"data": {}}, headers=MERGE)).status == 200


async def test_expired_watches_end_with_410_and_resuming_gets_410(emulator: Any) -> None:
    api = emulator
    await api.post(PATH, json={"metadata": {"name": "w"}})
    since = (await (await api.get(PATH)).json())["metadata"]["resourceVersion"]
    task = asyncio.create_task(watch_events(api, PATH, since))
    await asyncio.sleep(0.2)
    await api.expire_watches()
    [event] = await task
    assert event["type"] == "ERROR" and event["object"]["code"] == 410
    [event] = await watch_events(api, PATH, since)
    assert event["type"] == "ERROR" and event["object"]["code"] == 410
    # A fresh list gives a resourceVersion to watch from again.
    since = (await (await api.get(PATH)).json())["metadata"]["resourceVersion"]
    task = asyncio.create_task(watch_events(api, PATH, since))
    await asyncio.sleep(0.2)
    await api.post(PATH, json={"metadata": {"name": "w2"}})
    assert [e["type"] for e in await task] == ["ADDED"]


async def test_status_subresource_and_main_resource_ignore_each_other(emulator: Any) -> None:
    api = emulator
    body = {"metadata": {"name": "d"}, "spec": {"replicas": 2}, "status": {"replicas": 9}}
    created = await (await api.post(DEPLOYMENTS, json=body)).json()
    assert "status" not in created  # ignored on create
    both = {"spec": {"replicas": 5}, "status": {"readyReplicas": 1}}
    rsp = await api.patch(f"{DEPLOYMENTS}/d/status", json=both, headers=MERGE)
    after = await rsp.json()
    assert after["spec"]["replicas"] == 2 and after["status"] == {"readyReplicas": 1}
    assert after["metadata"]["generation"] == 1
    rsp = await api.patch(f"{DEPLOYMENTS}/d", json=both | {"status": {"x": 1}}, headers=MERGE)
    after = await rsp.json()
    assert after["spec"]["replicas"] == 5 and after["status"] == {"readyReplicas": 1}
    assert after["metadata"]["generation"] == 2


async def test_deployment_replicas_are_defaulted(emulator: Any) -> None:
    api = emulator
    created = await (
        await api.post(DEPLOYMENTS, json={"metadata": {"name": "r"}, "spec": {}})
    ).json()
    assert created["spec"]["replicas"] == 1
    await api.patch(f"{DEPLOYMENTS}/r", json={"spec": {"replicas": 4}}, headers=MERGE)
    rsp = await api.patch(f"{DEPLOYMENTS}/r", json={"spec": {"replicas": None}}, headers=MERGE)
    assert (await rsp.json())["spec"]["replicas"] == 1  # null is "unset", and unset is 1


async def test_admission_refuses_what_the_api_server_refuses(emulator: Any) -> None:
    api = emulator
    crons = "/apis/batch/v1/namespaces/default/cronjobs"
    cases = [
        (crons, {"metadata": {"name": "c" * 53}, "spec": {"schedule": "0 3 * * *"}}, "52"),
        (crons, {"metadata": {"name": "c"}, "spec": {"schedule": "0 3 * *"}}, "spec.schedule"),
        (crons, {"metadata": {"name": "c"}, "spec": {"schedule": "TZ=UTC 0 3 * * *"}}, "TZ"),
        (
            crons,
            {"metadata": {"name": "c"}, "spec": {"schedule": "@daily", "timeZone": "Mars/X"}},
            "spec.timeZone",
        ),
        (PATH, {"metadata": {"name": "Not_A_Name"}}, "RFC 1123"),
    ]
    for path, body, message in cases:
        rsp = await api.post(path, json=body)
        assert rsp.status == 422, body
        assert message in (await rsp.json())["message"]
    ok = {"metadata": {"name": "c"}, "spec": {"schedule": "@daily", "timeZone": "Europe/Paris"}}
    assert (await api.post(crons, json=ok)).status in (200, 201)
    rsp = await api.patch(f"{crons}/c", json={"spec": {"schedule": "nope"}}, headers=MERGE)
    assert rsp.status == 422


async def test_label_selectors(emulator: Any) -> None:
    api = emulator
    await api.post(PATH, json={"metadata": {"name": "l1", "labels": {"a": "1", "b": "x"}}})
    await api.post(PATH, json={"metadata": {"name": "l2", "labels": {"a": "2"}}})

    async def names(selector: str) -> list[str]:
        listing = await (await api.get(PATH, params={"labelSelector": selector})).json()
        return sorted(i["metadata"]["name"] for i in listing["items"])

    assert await names("a=1") == ["l1"]
    assert await names("a,!b") == ["l2"]
    assert await names("a!=1") == ["l2"]
