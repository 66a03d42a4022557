"""kmock's KubernetesEmulator, fixed where kopf needs a real API server's behaviour.

As shipped, the emulator never sets ``metadata.resourceVersion``, replays every stored object as
ADDED on each watch (even one resumed from a resourceVersion), and answers a JSON patch whose
``test`` operation fails with 500 where a real API server answers 422. It also never sets the
``uid``, ``generation`` and ``creationTimestamp`` that controllers rely on, and has no garbage
collector for owner references (added here, as kube-controller-manager does it).
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp.web
import jsonpatch
import kmock
from kmock._internal import enums, rendering
from kmock._internal.dicts import patch_dict


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FixedEmulator(kmock.KubernetesEmulator):
    _counter: itertools.count[int]

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._counter = itertools.count(1000)
        self.last_rv = 1000

    def _next_rv(self) -> str:
        self.last_rv = next(self._counter)
        return str(self.last_rv)

    def _stored(self, request: rendering.Request) -> dict[str, Any] | None:
        key: Any = (request.resource, request.namespace, request.name)
        if key in self.objects and not self.objects[key].deleted:
            raw: dict[str, Any] = self.objects[key].raw
            return raw
        return None

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None:
            data = request.data
            if request.action == enums.action.CREATE and isinstance(data, dict):
                meta = data.setdefault("metadata", {})
                meta["resourceVersion"] = self._next_rv()
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", _now())
                meta.setdefault("generation", 1)
                if request.namespace and "namespace" not in meta:
                    meta["namespace"] = request.namespace
            elif request.action == enums.action.UPDATE and request.name is not None:
                current = self._stored(request)
                generation = int(((current or {}).get("metadata") or {}).get("generation") or 1)
                if isinstance(data, dict):
                    meta = data.setdefault("metadata", {}) or {}
                    data["metadata"] = meta
                    meta["resourceVersion"] = self._next_rv()
                    if request.subresource is None and "spec" in data and current is not None:
                        merged = patch_dict(current, {"spec": data["spec"]})
                        if merged.get("spec") != current.get("spec"):
                            meta["generation"] = generation + 1
                elif isinstance(data, list):
                    data.append(
                        {"op": "add", "path": "/metadata/resourceVersion", "value": self._next_rv()}
                    )
        try:
            response = await super()._handle(request)
        except (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPatchConflict) as e:
            return await self._render_error(
                kmock.KubernetesError(status=422, reason="Invalid", message=str(e))
            )
        if request.resource is not None and request.action in (
            enums.action.DELETE,
            enums.action.UPDATE,
        ):
            await self._collect_garbage()
        return response

    async def _collect_garbage(self) -> None:
        """What kube-controller-manager's garbage collector does (background propagation):
        delete every object all of whose owners are gone, transitively."""
        async with self._lock:
            while True:
                live = [(key, obj) for key, obj in self.objects.items() if not obj.deleted]
                uids = {obj.raw.get("metadata", {}).get("uid") for _, obj in live}
                orphans = [
                    (key, obj)
                    for key, obj in live
                    if (refs := obj.raw.get("metadata", {}).get("ownerReferences"))
                    and not any(ref.get("uid") in uids for ref in refs)
                ]
                if not orphans:
                    return
                for (resource, _, _), obj in orphans:
                    raw = obj.raw
                    obj.delete()
                    await self._buses[resource].put({"type": "DELETED", "object": raw})

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        result: Any = await super()._serve_list(request)
        result["metadata"]["resourceVersion"] = str(self.last_rv)
        return result  # type: ignore[no-any-return]

    def _matches(self, request: rendering.Request, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if request.namespace is not None and meta.get("namespace") != request.namespace:
            return False
        return request.name is None or meta.get("name") == request.name

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        yield b""
        since = int(request.params.get("resourceVersion") or 0)
        async with self._lock:
            events = [
                {"type": "ADDED", "object": obj.raw}
                for (resource, _, _), obj in self.objects.items()
                if resource == request.resource and not obj.deleted
                if self._matches(request, obj.raw)
                if int(obj.raw.get("metadata", {}).get("resourceVersion") or 0) > since
            ]
        for event in events:
            yield event
        assert request.resource is not None
        async for event in self._buses[request.resource]:
            if self._matches(request, event.get("object") or {}):
                yield event


async def eventually(
    check: Callable[[], Any] | Callable[[], Awaitable[Any]], within: float = 10.0
) -> Any:
    """Poll ``check`` until it returns something truthy (and return it), or fail."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if asyncio.iscoroutine(last):
                last = await last
            if last:
                return last
        except (KeyError, ValueError, AssertionError, TypeError):
            last = None
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {within}s (last: {last!r})")
