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
