"""The ``berth-operator`` console script."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import aiohttp
import kopf
from k8s_emulator import eventually

from berth_operator.main import DEFAULT_LIVENESS, parse_args


def test_console_script_is_declared() -> None:
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts["berth-operator"] == "berth_operator.main:main"
    assert scripts["berth"] == "berth.cli:main"


def test_arguments() -> None:
    args = parse_args([])
    assert args.namespace == [] and args.liveness == DEFAULT_LIVENESS
    args = parse_args(["-n", "registry", "--namespace", "team-*", "--liveness", "", "--verbose"])
    assert args.namespace == ["registry", "team-*"] and args.liveness == "" and args.verbose


def test_handlers_register_with_kopf() -> None:
    import berth_operator.handlers  # noqa: F401

    registry = kopf.get_default_registry()
    changing = {h.id for h in registry._changing.get_all_handlers()}
    watching = {h.id for h in registry._watching.get_all_handlers()}
    assert {"reconcile_registry", "reconcile_gc"} <= changing
    # No on-delete handler: nothing adds a finalizer (owner references do the cleanup).
    assert not registry._changing.get_all_handlers() or all(
        "delete" not in h.id for h in registry._changing.get_all_handlers()
    )
    assert {"deployment_changed", "gc_job_changed"} <= watching


async def test_console_script_runs_the_operator(emulator: Any) -> None:
    """``berth-operator`` as a process: it reconciles and answers on its liveness endpoint."""
    api = emulator
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    liveness = f"http://127.0.0.1:{port}/healthz"
    script = Path(sys.executable).with_name("berth-operator")
    proc = await asyncio.create_subprocess_exec(
        str(script),
        "--log-format",
        "plain",
        "--liveness",
        liveness,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ},
    )
    try:
        body = {
            "apiVersion": "berth.dev/v1alpha1",
            "kind": "Registry",
            "metadata": {"name": "proc", "namespace": "default"},
            "spec": {},
        }
        rsp = await api.post("/apis/berth.dev/v1alpha1/namespaces/default/registries", json=body)
        assert rsp.status in (200, 201)

        def deployed() -> bool:
            try:
                return not api.objects["apps/v1/deployments", "default", "proc"].deleted
            except KeyError:
                return False

        await eventually(deployed, within=30)
        async with aiohttp.ClientSession() as session:

            async def alive() -> bool:
                try:
                    async with session.get(liveness) as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            assert await eventually(alive, within=10)
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout=15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
