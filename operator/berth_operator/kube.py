"""A small async Kubernetes REST client and the compare-and-patch apply on top of it.

Credentials come from the ``kubernetes`` library's loaders (in-cluster service account, else
kubeconfig), read the same way kopf reads them; requests go through aiohttp on the operator's
event loop, so handlers stay async and never block it.
"""

from __future__ import annotations

import json
import os
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp
import kubernetes.client
import kubernetes.config

Obj = dict[str, Any]

LAST_APPLIED = "berth.dev/last-applied"
MERGE_PATCH = "application/merge-patch+json"

# kind -> (apiVersion, plural); every kind the operator reads or writes.
KINDS: dict[str, tuple[str, str]] = {
    "ConfigMap": ("v1", "configmaps"),
    "Service": ("v1", "services"),
    "PersistentVolumeClaim": ("v1", "persistentvolumeclaims"),
    "Pod": ("v1", "pods"),
    "Deployment": ("apps/v1", "deployments"),
    "HorizontalPodAutoscaler": ("autoscaling/v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ("policy/v1", "poddisruptionbudgets"),
    "ServiceMonitor": ("monitoring.coreos.com/v1", "servicemonitors"),
    "Ingress": ("networking.k8s.io/v1", "ingresses"),
    "CronJob": ("batch/v1", "cronjobs"),
    "Job": ("batch/v1", "jobs"),
    "Registry": ("berth.dev/v1alpha1", "registries"),
    "GarbageCollection": ("berth.dev/v1alpha1", "garbagecollections"),
    "DaemonSet": ("apps/v1", "daemonsets"),
    "NetworkPolicy": ("networking.k8s.io/v1", "networkpolicies"),
    "HTTPRoute": ("gateway.networking.k8s.io/v1", "httproutes"),
    "Certificate": ("cert-manager.io/v1", "certificates"),
    "CustomResourceDefinition": ("apiextensions.k8s.io/v1", "customresourcedefinitions"),
}


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def object_path(kind: str, namespace: str | None, name: str | None = None) -> str:
    api_version, plural = KINDS[kind]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
    return f"{path}/{name}" if name else path


@dataclass
class Credentials:
    server: str
    authorization: str | None = None
    ca_path: str | None = None
    cert_path: str | None = None
    key_path: str | None = None
    verify: bool = True


def load_credentials() -> Credentials:
    """In-cluster service account first, then kubeconfig (as kopf's own login does)."""
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=os.environ.get("KUBECONFIG") or None
        )
    config = kubernetes.client.Configuration.get_default_copy()
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix(
        "authorization"
    )
    if header and " " not in header:
        header = f"Bearer {header}"
    return Credentials(
        server=config.host.rstrip("/"),
        authorization=header,
        ca_path=config.ssl_ca_cert,
        cert_path=config.cert_file,
        key_path=config.key_file,
        verify=bool(config.verify_ssl),
    )


class Kube:
    """Minimal JSON client: get / list / create / merge-patch / delete."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        creds = self.credentials
        if not creds.server.startswith("https"):
            return False
        if not creds.verify:
            return False
        context = ssl.create_default_context(cafile=creds.ca_path)
        if creds.cert_path:
            context.load_cert_chain(creds.cert_path, creds.key_path)
        return context

    async def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl())
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=30)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if self.credentials.authorization:
            headers["Authorization"] = self.credentials.authorization
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        session = await self._client()
        url = self.credentials.server + path
        async with session.request(method, url, data=data, headers=headers, params=params) as rsp:
            text = await rsp.text()
            if rsp.status >= 400:
                try:
                    status = json.loads(text)
                    reason, message = status.get("reason", ""), status.get("message", text)
                except ValueError:
                    reason, message = rsp.reason or "", text
                raise ApiError(rsp.status, str(reason), str(message)[:500])
            return json.loads(text) if text else None

    async def get(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        try:
            result: Obj = await self.request("GET", object_path(kind, namespace, name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        return result

    async def list(self, kind: str, namespace: str | None, label_selector: str) -> list[Obj]:
        result = await self.request(
            "GET", object_path(kind, namespace), params={"labelSelector": label_selector}
        )
        return list(result.get("items") or [])

    async def create(self, obj: Obj) -> Obj:
        meta = obj["metadata"]
        result: Obj = await self.request(
            "POST", object_path(obj["kind"], meta.get("namespace")), obj
        )
        return result

    async def patch(
        self, kind: str, namespace: str | None, name: str, patch: Any, *, subresource: str = ""
    ) -> Obj:
        path = object_path(kind, namespace, name) + (f"/{subresource}" if subresource else "")
        result: Obj = await self.request("PATCH", path, patch, content_type=MERGE_PATCH)
        return result

    async def delete(self, kind: str, namespace: str | None, name: str) -> bool:
        """Delete in the background (dependents by the garbage collector); False if absent."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        try:
            await self.request("DELETE", object_path(kind, namespace, name), body)
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        return True

    async def has_api(self, group_version: str, plural: str) -> bool:
        """Whether the API server serves ``plural`` in ``group_version`` (e.g. a CRD exists)."""
        try:
            result = await self.request("GET", f"/apis/{group_version}")
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        return any(r.get("name") == plural for r in (result or {}).get("resources") or [])


# --------------------------------------------------------------------------- compare and patch


def is_subset(desired: Any, current: Any) -> bool:
    """True when every field of ``desired`` has the same value in ``current`` (server defaults
    and server-managed fields in ``current`` are ignored)."""
    if isinstance(desired, dict):
        return isinstance(current, dict) and all(
            is_subset(v, current.get(k)) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(current, list)
            and len(desired) == len(current)
            and all(is_subset(d, c) for d, c in zip(desired, current, strict=True))
        )
    return bool(desired == current)


def three_way_patch(last: Any, desired: Obj, current: Obj) -> Obj:
    """A JSON merge patch that makes ``current`` match ``desired`` and drops the fields that
    the previous apply (``last``) set but ``desired`` no longer has."""
    patch: Obj = {}
    last = last if isinstance(last, dict) else {}
    for key, value in desired.items():
        cur = current.get(key)
        if isinstance(value, dict) and isinstance(cur, dict):
            sub = three_way_patch(last.get(key), value, cur)
            if sub:
                patch[key] = sub
        elif not is_subset(value, cur) or (value == {} and cur is None):
            patch[key] = value
    for key in last:
        if key not in desired and key in current:
            patch[key] = None
    return patch


def with_last_applied(desired: Obj) -> Obj:
    body = json.loads(json.dumps(desired))
    text = json.dumps(desired, sort_keys=True, separators=(",", ":"))
    body["metadata"].setdefault("annotations", {})[LAST_APPLIED] = text
    return body


class NameConflict(Exception):
    """An object with the desired name exists and belongs to someone else: left untouched."""

    def __init__(self, obj: Obj, holder: str) -> None:
        meta = obj.get("metadata") or {}
        self.kind = str(obj.get("kind"))
        self.name = str(meta.get("name"))
        super().__init__(
            f"{self.kind} {self.name} already exists and is not managed by this resource "
            f"({holder}); it was left untouched: delete or rename it"
        )


# Labels that tie an object to its owner without an owner reference (the data PVC has none).
OWNER_LABELS = ("berth.dev/registry", "berth.dev/garbage-collection")
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"

# Fields the operator hands over to another controller when it stops setting them: dropping them
# from a patch (null) would make the API server default them (a Deployment's replicas to 1).
RELINQUISHED: dict[str, tuple[tuple[str, ...], ...]] = {
    "Deployment": (("spec", "replicas"),),
}


def ownership(desired: Obj, current: Obj) -> str | None:
    """``None`` if ``current`` is the object ``desired`` describes (or an orphan of ours to
    adopt), else who holds it."""
    want = desired.get("metadata") or {}
    have = current.get("metadata") or {}
    refs = have.get("ownerReferences") or []
    labels = have.get("labels") or {}
    wanted_refs = want.get("ownerReferences") or []
    if wanted_refs:
        uid = wanted_refs[0].get("uid")
        if any(r.get("uid") == uid for r in refs):
            return None
        controller = next((r for r in refs if r.get("controller")), None)
        if controller is not None:
            return f"controlled by {controller.get('kind')} {controller.get('name')}"
    # No owner reference wanted (the PVC), or none held: ours if our labels say so.
    wanted_labels = want.get("labels") or {}
    mine = [k for k in OWNER_LABELS if k in wanted_labels]
    if (
        mine
        and labels.get(MANAGED_BY_LABEL) == wanted_labels.get(MANAGED_BY_LABEL)
        and all(labels.get(k) == wanted_labels[k] for k in mine)
    ):
        return None
    return "not created by berth-operator for it"


def _drop_relinquished(kind: str, patch: Obj, desired: Obj) -> None:
    for path in RELINQUISHED.get(kind, ()):
        node: Any = patch
        wanted: Any = desired
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
            wanted = wanted.get(key) if isinstance(wanted, dict) else None
        handed_over = not (isinstance(wanted, dict) and path[-1] in wanted)
        if isinstance(node, dict) and path[-1] in node and node[path[-1]] is None and handed_over:
            del node[path[-1]]
            if not node and len(path) > 1:
                _prune_empty(patch, path[:-1])


def _prune_empty(patch: Obj, path: tuple[str, ...]) -> None:
    parent: Any = patch
    for key in path[:-1]:
        parent = parent.get(key)
    if isinstance(parent, dict) and parent.get(path[-1]) == {}:
        del parent[path[-1]]


def drift(desired: Obj, current: Obj) -> Obj:
    """The patch ``apply`` would send to bring ``current`` to ``desired`` (empty: in sync)."""
    annotations = (current.get("metadata") or {}).get("annotations") or {}
    try:
        last = json.loads(annotations.get(LAST_APPLIED, "{}"))
    except ValueError:
        last = {}
    patch = three_way_patch(last, with_last_applied(desired), current)
    patch.pop("apiVersion", None)
    patch.pop("kind", None)
    _drop_relinquished(str(desired["kind"]), patch, desired)
    return patch


async def apply(
    kube: Kube, desired: Obj, *, create_only: bool = False, current: Obj | None = None
) -> str:
    """Create ``desired`` or patch the live object towards it. Returns what was done:
    ``created``, ``patched`` or ``unchanged``. Idempotent.

    An object of that name that is not ours (no owner reference to the same owner, or for an
    unowned object such as the data PVC, not our labels) raises ``NameConflict`` and is not
    touched. ``current``, when the caller has just seen the live object, saves the read.
    """
    meta = desired["metadata"]
    if current is None:
        current = await kube.get(desired["kind"], meta.get("namespace"), meta["name"])
    if current is None:
        try:
            await kube.create(with_last_applied(desired))
        except ApiError as e:
            if e.status != 409:
                raise
            return "unchanged"  # created concurrently; the next pass compares
        return "created"
    holder = ownership(desired, current)
    if holder is not None:
        raise NameConflict(desired, holder)
    if create_only:
        return "unchanged"
    patch = drift(desired, current)
    if not patch:
        return "unchanged"
    await kube.patch(desired["kind"], meta.get("namespace"), meta["name"], patch)
    return "patched"
