"""kmock's KubernetesEmulator, fixed where kopf and the operator need a real API server's behaviour.

As shipped, the emulator never sets ``metadata.resourceVersion``, replays every stored object as
ADDED on each watch (even one resumed from a resourceVersion), and answers a JSON patch whose
``test`` operation fails with 500 where a real API server answers 422. It also never sets the
``uid``, ``generation`` and ``creationTimestamp`` that controllers rely on, and has no garbage
collector for owner references (added here, as kube-controller-manager does it).

What a real API server also does, and this emulator now does too (each of these hid a bug):

- **deletes are watch events** with a new resourceVersion, for a direct delete as for one by the
  garbage collector, so a controller watching its objects sees them go;
- **409 Conflict**: a create of an existing name (reason ``AlreadyExists``) and an update whose
  ``metadata.resourceVersion`` is stale (reason ``Conflict``); ``inject()`` makes any request fail
  once with a chosen status, as a concurrent writer or an admission webhook would;
- **410 Gone**: ``expire_watches()`` ends every open watch with an ERROR event (code 410), as etcd
  compaction does, and a watch resumed from a compacted resourceVersion gets the same;
- **status subresource**: for a resource with ``status`` among its subresources, a write to the
  main resource ignores ``status`` and a write to ``/status`` ignores everything but ``status``;
- **defaulting**: a Deployment without ``spec.replicas`` (or a patch setting it to null) gets 1;
- **admission**: names are DNS-1123 (at most 253 characters; 63 for Services, Jobs and the pods'
  ``job-name`` label; 52 for CronJobs, whose Jobs add 11), a CronJob's ``schedule`` has five
  fields or a macro and its ``timeZone`` is a known zone -- else 422 with the API's wording;
- ``labelSelector`` on lists and watches (equality, ``!=``, existence and ``!key``).
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import re
import time
import uuid
import zoneinfo
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import jsonpatch
import kmock
from kmock._internal import enums, rendering
from kmock._internal.dicts import patch_dict

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# Longest names where the API server derives something from the name (labels, pod names, DNS).
NAME_LIMITS = {"services": 63, "jobs": 63, "cronjobs": 52}
CRON_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
CRON_FIELD = re.compile(r"^[0-9A-Za-z*?,/-]+$")
# Defaults the API server fills in: resource plural -> (path, value).
DEFAULTS: dict[str, list[tuple[tuple[str, ...], Any]]] = {
    "deployments": [(("spec", "replicas"), 1)],
}


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_error(status: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "code": status,
        "reason": reason,
        "message": message,
    }


@dataclass
class Injected:
    """A failure to answer instead of serving matching requests (``times`` more times)."""

    method: str
    plural: str
    name: str | None
    status: int
    reason: str
    message: str
    times: int


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """A label selector in its string form (``a=b,c!=d,e,!f``); set-based forms are not used."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def cron_problem(schedule: Any) -> str | None:
    """What the CronJob validation says about ``schedule`` (None: valid)."""
    if not isinstance(schedule, str) or not schedule.strip():
        return "Required value"
    if "TZ=" in schedule:
        return "cannot use TZ or CRON_TZ in schedule, use timeZone field instead"
    fields = schedule.split()
    if len(fields) == 1 and fields[0] in CRON_MACROS:
        return None
    if len(fields) != 5:
        return f"expected exactly 5 fields, found {len(fields)}: {schedule}"
    for field in fields:
        if not CRON_FIELD.match(field):
            return f"failed to parse int from {field}"
    return None


class FixedEmulator(kmock.KubernetesEmulator):
    _counter: itertools.count[int]

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._counter = itertools.count(1000)
        self.last_rv = 1000
        self.compacted_rv = 0
        self.injected: list[Injected] = []

    # ----------------------------------------------------------------------- test controls

    @property
    def requests(self) -> list[rendering.Request]:
        """Every request served so far, in order."""
        return list(self._requests)

    def client_requests(self) -> list[rendering.Request]:
        """The requests of the operator (kopf and ``Kube``: they authenticate; tests do not)."""
        return [r for r in self._requests if "Authorization" in r.headers]

    def inject(
        self,
        method: str,
        plural: str,
        status: int,
        *,
        name: str | None = None,
        reason: str = "",
        message: str = "",
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` ``method`` requests on ``plural`` (``name``) with an error."""
        default_reason = {409: "Conflict", 422: "Invalid", 403: "Forbidden", 500: "InternalError"}
        self.injected.append(
            Injected(
                method.upper(),
                plural,
                name,
                status,
                reason or default_reason.get(status, "Failure"),
                message or f"injected {status}",
                times,
            )
        )

    async def expire_watches(self) -> None:
        """Compact history: every open watch ends with 410 Gone, and so does a resumed one."""
        self._next_rv()  # the history up to now is compacted; a fresh list starts after it
        self.compacted_rv = self.last_rv
        gone = {"type": "ERROR", "object": self._gone()}
        for bus in list(self._buses.values()):
            await bus.put(gone)

    async def delete_unseen(self, resource: str, namespace: str, name: str) -> None:
        """Delete an object with no watch event: what a watcher misses while disconnected (the
        history it would resume from is compacted, so it must re-list -- and the object is not
        in that list)."""
        async with self._lock:
            self.objects[resource, namespace, name].delete()
        await self.expire_watches()

    def _gone(self) -> dict[str, Any]:
        message = f"too old resource version: {self.compacted_rv - 1} ({self.compacted_rv})"
        return status_error(410, "Expired", message)

    # ----------------------------------------------------------------------- helpers

    def _next_rv(self) -> str:
        self.last_rv = next(self._counter)
        return str(self.last_rv)

    def _stored(self, request: rendering.Request) -> dict[str, Any] | None:
        key: Any = (request.resource, request.namespace, request.name)
        if key in self.objects and not self.objects[key].deleted:
            raw: dict[str, Any] = self.objects[key].raw
            return raw
        return None

    def _has_status(self, request: rendering.Request) -> bool:
        if request.resource is None or request.resource not in self.resources:
            return False
        return "status" in set(self.resources[request.resource].subresources or ())

    def _injected(self, request: rendering.Request) -> Injected | None:
        plural = request.resource.plural if request.resource is not None else None
        for fault in self.injected:
            if (
                fault.times > 0
                and fault.method == getattr(request.method, "value", str(request.method))
                and fault.plural == plural
                and fault.name in (None, request.name)
            ):
                fault.times -= 1
                return fault
        return None

    @staticmethod
    def _set_defaults(plural: str, data: dict[str, Any], *, patch: bool) -> None:
        for path, value in DEFAULTS.get(plural, []):
            node = data
            for key in path[:-1]:
                node = node.get(key) if isinstance(node, dict) else None  # type: ignore[assignment]
                if node is None:
                    break
            if not isinstance(node, dict):
                continue
            if patch:
                if path[-1] in node and node[path[-1]] is None:
                    node[path[-1]] = value  # a merge patch removing the field: defaulted again
            elif node.get(path[-1]) is None:
                node[path[-1]] = value

    def _admission(self, request: rendering.Request, obj: dict[str, Any]) -> str | None:
        """What the API server's validation refuses in ``obj`` (the merged object)."""
        assert request.resource is not None
        plural = request.resource.plural or ""
        meta = obj.get("metadata") or {}
        name = str(meta.get("name") or "")
        limit = NAME_LIMITS.get(plural, 253)
        if len(name) > limit:
            return (
                f"metadata.name: Invalid value: {name!r}: must be no more than {limit} characters"
            )
        if name and not DNS1123_SUBDOMAIN.match(name):
            return (
                f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 subdomain must "
                "consist of lower case alphanumeric characters, '-' or '.'"
            )
        if plural == "cronjobs":
            spec = obj.get("spec") or {}
            problem = cron_problem(spec.get("schedule"))
            if problem:
                return f"spec.schedule: Invalid value: {spec.get('schedule')!r}: {problem}"
            zone = spec.get("timeZone")
            if zone is not None:
                try:
                    zoneinfo.ZoneInfo(str(zone))
                except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                    return f"spec.timeZone: Invalid value: {zone!r}: unknown time zone {zone}"
        return None

    async def _error(self, status: int, reason: str, message: str) -> aiohttp.web.StreamResponse:
        return aiohttp.web.json_response(status_error(status, reason, message), status=status)

    # ----------------------------------------------------------------------- requests

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None:
            fault = self._injected(request)
            if fault is not None:
                return await self._error(fault.status, fault.reason, fault.message)
            answer = await self._prepare(request)
            if answer is not None:
                return answer
            if request.action == enums.action.DELETE and request.name is not None:
                deleted = await self._delete(request)
                if deleted is not None:
                    return deleted
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

    async def _prepare(self, request: rendering.Request) -> aiohttp.web.StreamResponse | None:
        """Rewrite a write request as a real API server would see it, or refuse it."""
        assert request.resource is not None
        plural = request.resource.plural or ""
        data = request.data
        if request.action == enums.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if request.namespace and "namespace" not in meta:
                meta["namespace"] = request.namespace
            key: Any = (request.resource, meta.get("namespace"), meta.get("name"))
            if key in self.objects and not self.objects[key].deleted:
                kind = (self.resources[request.resource].kind or plural) if plural else plural
                return await self._error(
                    409, "AlreadyExists", f'{kind} "{meta.get("name")}" already exists'
                )
            if self._has_status(request):
                data.pop("status", None)
            self._set_defaults(plural, data, patch=False)
            problem = self._admission(request, data)
            if problem:
                return await self._error(422, "Invalid", problem)
            meta["resourceVersion"] = self._next_rv()
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta.setdefault("generation", 1)
        elif request.action == enums.action.UPDATE and request.name is not None:
            current = self._stored(request)
            if current is None:
                return None  # kmock answers 404
            status_only = request.subresource == "status"
            if isinstance(data, dict):
                meta = data.get("metadata") or {}
                wanted = meta.get("resourceVersion")
                have = (current.get("metadata") or {}).get("resourceVersion")
                if wanted is not None and str(wanted) != str(have):
                    return await self._error(
                        409,
                        "Conflict",
                        f'Operation cannot be fulfilled on {plural} "{request.name}": the object '
                        "has been modified; please apply your changes to the latest version and "
                        "try again",
                    )
                if status_only:
                    kept = {"status": data["status"]} if "status" in data else {}
                    data.clear()
                    data.update(kept)
                elif self._has_status(request):
                    data.pop("status", None)
                self._set_defaults(plural, data, patch=True)
                merged = patch_dict(current, data)
                problem = self._admission(request, dict(merged))
                if problem:
                    return await self._error(422, "Invalid", problem)
                generation = int((current.get("metadata") or {}).get("generation") or 1)
                meta = dict(data.get("metadata") or {})
                meta["resourceVersion"] = self._next_rv()
                if not status_only and "spec" in data and merged.get("spec") != current.get("spec"):
                    meta["generation"] = generation + 1
                data["metadata"] = meta
            elif isinstance(data, list):
                if status_only:
                    data[:] = [op for op in data if str(op.get("path", "")).startswith("/status")]
                elif self._has_status(request):
                    data[:] = [
                        op for op in data if not str(op.get("path", "")).startswith("/status")
                    ]
                data.append(
                    {"op": "add", "path": "/metadata/resourceVersion", "value": self._next_rv()}
                )
        return None

    async def _delete(self, request: rendering.Request) -> aiohttp.web.StreamResponse | None:
        """Delete without finalizers: the DELETED event carries a new resourceVersion."""
        async with self._lock:
            current = self._stored(request)
            if current is None or (current.get("metadata") or {}).get("finalizers"):
                return None  # kmock answers 404, or marks it for deletion
            key: Any = (request.resource, request.namespace, request.name)
            raw = dict(current)
            rv = self._next_rv()
            raw["metadata"] = {**(current.get("metadata") or {}), "resourceVersion": rv}
            self.objects[key].delete()
            assert request.resource is not None
            await self._buses[request.resource].put({"type": "DELETED", "object": raw})
        await self._collect_garbage()
        return aiohttp.web.json_response(raw)

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
                    raw = dict(obj.raw)
                    rv = self._next_rv()
                    raw["metadata"] = {**raw.get("metadata", {}), "resourceVersion": rv}
                    obj.delete()
                    await self._buses[resource].put({"type": "DELETED", "object": raw})

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        result: Any = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        if selector:
            result["items"] = [
                item
                for item in result["items"]
                if selector_matches(selector, (item.get("metadata") or {}).get("labels") or {})
            ]
        result["metadata"]["resourceVersion"] = str(self.last_rv)
        return result  # type: ignore[no-any-return]

    def _matches(self, request: rendering.Request, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if request.namespace is not None and meta.get("namespace") != request.namespace:
            return False
        selector = request.params.get("labelSelector")
        if selector and not selector_matches(selector, meta.get("labels") or {}):
            return False
        return request.name is None or meta.get("name") == request.name

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        yield b""
        since = int(request.params.get("resourceVersion") or 0)
        if since and since < self.compacted_rv:
            yield {"type": "ERROR", "object": self._gone()}
            return
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
            if event.get("type") == "ERROR":
                yield event
                return
            if self._matches(request, event.get("object") or {}):
                yield event


async def eventually(
    check: Callable[[], Any] | Callable[[], Awaitable[Any]], within: float = 30.0
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
