"""Fixtures: the fixed kmock API emulator on loopback and the real operator running against it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kubernetes.config.kube_config
import pytest
import pytest_asyncio
import yaml
from k8s_emulator import FixedEmulator
from rbac import access_of, allowed, operator_rules

kmock = pytest.importorskip("kmock")

RESOURCES: dict[str, dict[str, Any]] = {
    "berth.dev/v1alpha1/registries": {"kind": "Registry", "subresources": {"status"}},
    "berth.dev/v1alpha1/garbagecollections": {
        "kind": "GarbageCollection",
        "subresources": {"status"},
    },
    "v1/configmaps": {"kind": "ConfigMap"},
    "v1/services": {"kind": "Service"},
    "v1/persistentvolumeclaims": {"kind": "PersistentVolumeClaim"},
    "v1/pods": {"kind": "Pod"},
    "v1/events": {"kind": "Event"},
    "apps/v1/deployments": {"kind": "Deployment", "subresources": {"status"}},
    "autoscaling/v2/horizontalpodautoscalers": {"kind": "HorizontalPodAutoscaler"},
    "policy/v1/poddisruptionbudgets": {"kind": "PodDisruptionBudget"},
    "networking.k8s.io/v1/ingresses": {"kind": "Ingress"},
    "networking.k8s.io/v1/networkpolicies": {"kind": "NetworkPolicy"},
    "apps/v1/daemonsets": {"kind": "DaemonSet"},
    "batch/v1/cronjobs": {"kind": "CronJob"},
    "batch/v1/jobs": {"kind": "Job", "subresources": {"status"}},
}
CLUSTER_RESOURCES: dict[str, dict[str, Any]] = {
    "v1/namespaces": {"kind": "Namespace"},
    "apiextensions.k8s.io/v1/customresourcedefinitions": {"kind": "CustomResourceDefinition"},
}
VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}


@pytest_asyncio.fixture()
async def emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    async with FixedEmulator() as api, kmock.Server(api) as server:
        for key, info in RESOURCES.items():
            api.resources[key] = kmock.ResourceInfo(namespaced=True, verbs=VERBS, **info)
        for key, info in CLUSTER_RESOURCES.items():
            api.resources[key] = kmock.ResourceInfo(namespaced=False, verbs=VERBS, **info)
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": str(server.url).rstrip("/")}}],
            "users": [{"name": "test", "user": {"token": "test-token"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}],
            "current-context": "kmock",
        }
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig))
        monkeypatch.setenv("KUBECONFIG", str(path))
        # The kubernetes library reads $KUBECONFIG once, at import (kopf's login relies on it).
        monkeypatch.setattr(
            kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path)
        )
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setenv("BERTH_REGISTRY_IMAGE", "berth:test")
        yield api


@contextlib.asynccontextmanager
async def operator_running(emulator: Any) -> AsyncIterator[Any]:
    """The operator's own main coroutine, on its own event loop in a thread (as kopf's
    KopfRunner does): kopf waits for every other task of its loop when it stops. Entering it
    again after it stopped is an operator restart."""
    from berth_operator import handlers
    from berth_operator.main import run

    handlers._kube = None
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(run(liveness=None, stop_flag=stop, ready_flag=ready))
        except BaseException as e:  # surfaced in the test's teardown
            errors.append(e)

    thread = threading.Thread(target=target, name="berth-operator", daemon=True)
    thread.start()
    assert await asyncio.to_thread(ready.wait, 10), "the operator did not start"
    try:
        yield emulator
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 15)
        handlers._kube = None
    assert not thread.is_alive(), "the operator did not stop"
    assert not errors, errors


@pytest_asyncio.fixture()
async def operator(emulator: Any) -> AsyncIterator[Any]:
    """The operator running against the emulator; afterwards, every request it made is checked
    against the chart's RBAC rules."""
    async with operator_running(emulator):
        yield emulator
    check_rbac(emulator)


def check_rbac(api: Any) -> None:
    """Every request the operator made in the test is allowed by the chart's RBAC rules."""
    try:
        rules = operator_rules()
    except FileNotFoundError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(str(e))
        return
    denied = sorted(
        {str(a) for r in api.client_requests() if (a := access_of(r)) and not allowed(a, rules)}
    )
    assert not denied, f"requests the chart's RBAC does not allow: {denied}"


@pytest.fixture()
def fast_resync(monkeypatch: pytest.MonkeyPatch) -> float:
    """A periodic resync every second (request it before ``operator``)."""
    monkeypatch.setenv("BERTH_OPERATOR_RESYNC_SECONDS", "1")
    return 1.0
