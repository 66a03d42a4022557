"""The real operator against the emulator: StorageAvailable from the storage probe, CRDs older
than the operator, config overridden by dedicated fields, scale, node setup and NetworkPolicy
(issue 11, points 7, 11, 12 and 13)."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import aiohttp.web
import pytest
import pytest_asyncio
from k8s_emulator import eventually
from test_operator_kopf import condition, create, live, patch, registry

from berth_operator.crds import load_crds
from berth_operator.serving import SCHEMA_ANNOTATION, http_storage_probe

REG = "berth.dev/v1alpha1/registries"
S3 = {"driver": "s3", "s3": {"bucket": "images"}}
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


class FakeProbe:
    """Answers for each Registry URL what the test says; records what was asked."""

    def __init__(self) -> None:
        self.healthy: dict[str, bool] = {}
        self.asked: list[str] = []

    async def __call__(self, url: str) -> tuple[bool, str]:
        self.asked.append(url)
        host = url.split("//", 1)[1].split(".", 1)[0]
        ok = self.healthy.get(host, True)
        return ok, "storage answers" if ok else "/healthz/storage answered 503: S3 unreachable"


@pytest.fixture()
def probe(monkeypatch: pytest.MonkeyPatch) -> FakeProbe:
    from berth_operator import handlers

    fake = FakeProbe()
    monkeypatch.setattr(handlers, "storage_probe", fake)
    monkeypatch.setattr(handlers, "STORAGE_PROBE_SECONDS", 0.2)
    return fake


async def ready(api: Any, name: str, replicas: int = 2) -> None:
    """What the Deployment controller would report once the pods are ready."""
    status = {
        "observedGeneration": 99,
        "replicas": replicas,
        "readyReplicas": replicas,
        "updatedReplicas": replicas,
        "availableReplicas": replicas,
    }
    await patch(api, "apps/v1/deployments", name, {"status": status}, sub="status")


async def test_storage_available_follows_the_probe(probe: FakeProbe, operator: Any) -> None:
    api = operator
    probe.healthy["down"] = False
    await create(api, REG, registry("down", storage=S3, replicas=2))
    await create(api, REG, registry("up", storage=S3, replicas=2))
    for name in ("down", "up"):
        await eventually(lambda n=name: live(api, "apps/v1/deployments", n))
    # No ready replica yet: nothing to ask.
    reg = await eventually(
        lambda: (r := live(api, REG, "down")) and condition(r, "StorageAvailable") and r
    )
    assert condition(reg, "StorageAvailable")["status"] == "Unknown"
    assert condition(reg, "StorageAvailable")["reason"] == "NoReadyReplicas"
    for name in ("down", "up"):
        await ready(api, name)
    reg = await eventually(
        lambda: (
            (r := live(api, REG, "down"))
            and condition(r, "StorageAvailable").get("status") == "False"
            and r
        )
    )
    assert condition(reg, "StorageAvailable")["reason"] == "StorageUnreachable"
    assert "S3 unreachable" in condition(reg, "StorageAvailable")["message"]
    # An unreachable store does not make the registry unready (its pods keep serving pulls of
    # what caches hold, and recover by themselves); only StorageAvailable says so.
    await eventually(lambda: condition(live(api, REG, "down"), "Ready").get("status") == "True")
    await eventually(
        lambda: condition(live(api, REG, "up"), "StorageAvailable").get("status") == "True"
    )
    assert "http://down.default.svc:5000/healthz/storage" in probe.asked  # through the Service
    probe.healthy["down"] = True
    await eventually(
        lambda: condition(live(api, REG, "down"), "StorageAvailable").get("status") == "True"
    )


async def test_http_storage_probe_against_a_local_server() -> None:
    answers = {"/ok/healthz/storage": 200, "/down/healthz/storage": 503}

    async def handle(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(status=answers[request.path], text=request.path)

    app = aiohttp.web.Application()
    app.router.add_get("/{name}/healthz/storage", handle)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        ok, _ = await http_storage_probe(f"http://127.0.0.1:{port}/ok/healthz/storage")
        assert ok
        ok, message = await http_storage_probe(f"http://127.0.0.1:{port}/down/healthz/storage")
        assert not ok and "503" in message
    finally:
        await runner.cleanup()
    ok, message = await http_storage_probe(f"http://127.0.0.1:{port}/ok/healthz/storage", 2)
    assert not ok and "did not answer" in message


@pytest_asyncio.fixture()
async def old_crd(emulator: Any) -> AsyncIterator[None]:
    """The Registry CRD as an older chart installed it (Helm never upgrades crds/)."""
    crd = copy.deepcopy(load_crds()["Registry"])
    crd["metadata"]["annotations"][SCHEMA_ANNOTATION] = "1"
    rsp = await emulator.post(CRDS, json=crd)
    assert rsp.status in (200, 201), await rsp.text()
    yield


async def test_an_older_crd_is_reported(old_crd: None, operator: Any) -> None:
    api = operator
    await create(api, REG, registry("reg", storage=S3))
    reg = await eventually(
        lambda: (r := live(api, REG, "reg")) and condition(r, "CRDUpToDate") and r
    )
    outdated = condition(reg, "CRDUpToDate")
    assert (outdated["status"], outdated["reason"]) == ("False", "CRDOutdated")
    assert "kubectl apply --server-side -f charts/berth/crds/" in outdated["message"]


async def test_current_crd_config_override_and_scale(probe: FakeProbe, operator: Any) -> None:
    api = operator
    spec = {"storage": S3, "config": {"storage": {"s3": {"bucket": "elsewhere"}}}}
    await create(api, REG, registry("reg", **spec))
    reg = await eventually(
        lambda: (r := live(api, REG, "reg")) and condition(r, "ConfigOverridden") and r
    )
    assert condition(reg, "CRDUpToDate")["status"] == "True"  # none installed here: nothing old
    overridden = condition(reg, "ConfigOverridden")
    assert overridden["status"] == "True" and overridden["reason"] == "DedicatedFieldWins"
    config = live(api, "v1/configmaps", "reg-config")
    assert config is not None and "bucket: images" in config["data"]["config.yaml"]
    selector = reg["status"]["selector"]
    assert "app.kubernetes.io/instance=reg" in selector
    # `kubectl scale registry/reg --replicas=3` writes spec.replicas through the scale
    # subresource; the Deployment follows (manual mode).
    await patch(api, REG, "reg", {"spec": {"replicas": 3, "config": None}})
    await eventually(lambda: live(api, "apps/v1/deployments", "reg")["spec"]["replicas"] == 3)
    await eventually(
        lambda: condition(live(api, REG, "reg"), "ConfigOverridden").get("status") == "False"
    )


async def test_node_setup_and_network_policy(probe: FakeProbe, operator: Any) -> None:
    api = operator
    spec = {"storage": S3, "nodeSetup": {"enabled": True}, "networkPolicy": {"enabled": True}}
    await create(api, REG, registry("reg", **spec))
    await eventually(lambda: live(api, "networking.k8s.io/v1/networkpolicies", "reg"))
    service = await eventually(lambda: live(api, "v1/services", "reg"))
    assert live(api, "apps/v1/daemonsets", "reg-node-setup") is None  # no cluster IP yet
    # The API server allocates the Service's cluster IP; the DaemonSet follows.
    await patch(api, "v1/services", "reg", {"spec": {"clusterIP": "10.96.7.7"}})
    daemon_set = await eventually(lambda: live(api, "apps/v1/daemonsets", "reg-node-setup"))
    assert daemon_set["metadata"]["ownerReferences"][0]["name"] == "reg"
    hosts = live(api, "v1/configmaps", "reg-node-setup")
    assert hosts is not None and 'server = "http://10.96.7.7:5000"' in hosts["data"]["hosts.toml"]
    assert service["spec"]["ports"][1]["name"] == "metrics"
    # Turned off: the operator removes what it created for it.
    await patch(api, REG, "reg", {"spec": {"nodeSetup": {"enabled": False}}})
    await patch(api, REG, "reg", {"spec": {"networkPolicy": {"enabled": False}}})
    await eventually(lambda: live(api, "apps/v1/daemonsets", "reg-node-setup") is None)
    await eventually(lambda: live(api, "v1/configmaps", "reg-node-setup") is None)
    await eventually(lambda: live(api, "networking.k8s.io/v1/networkpolicies", "reg") is None)


async def test_probes_follow_the_watched_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    from berth_operator import handlers

    listed: list[str | None] = []
    probed: list[str] = []

    class FakeKube:
        async def list(self, kind: str, namespace: str | None, selector: str) -> list[Any]:
            listed.append(namespace)
            names = {"a": "one", "b": "two", None: "three"}
            spaces = [namespace] if namespace else ["a", "team-x", "c"]
            return [{"metadata": {"name": names.get(ns, ns), "namespace": ns}} for ns in spaces]

    async def fake_probe(registry: dict[str, Any]) -> None:
        probed.append(registry["metadata"]["namespace"])

    monkeypatch.setattr(handlers, "kube", FakeKube)
    monkeypatch.setattr(handlers, "probe_storage", fake_probe)
    monkeypatch.setattr(handlers, "watched_namespaces", ["a", "b"])
    await handlers.probe_all_registries()
    assert listed == ["a", "b"] and probed == ["a", "b"]  # named: listed one by one
    listed.clear(), probed.clear()
    monkeypatch.setattr(handlers, "watched_namespaces", ["team-*"])
    await handlers.probe_all_registries()
    assert listed == [None] and probed == ["team-x"]  # globs: listed once, filtered
