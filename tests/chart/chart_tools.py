"""Shared helpers for the chart tests: find helm, render the chart, validate custom resources."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from berth_operator.crds import openapi_schema

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "berth"


def tool(name: str) -> str:
    """A binary from tools/bin (scripts/install-helm.sh) or PATH; under CI=true it must exist."""
    local = ROOT / "tools" / "bin" / name
    found = str(local) if local.is_file() else shutil.which(name)
    if found:
        return found
    message = f"{name} not found in tools/bin or PATH: run scripts/install-helm.sh"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HELM_CACHE_HOME": "/tmp/berth-helm/cache",
        "HELM_CONFIG_HOME": "/tmp/berth-helm/config",
        "HELM_DATA_HOME": "/tmp/berth-helm/data",
        "KUBECONFIG": "/dev/null",
    }
    result = subprocess.run(
        [tool("helm"), *args], capture_output=True, text=True, timeout=60, env=env
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def template(*extra: str) -> str:
    return helm(
        "template", "berth", str(CHART), "--namespace", "registry", "--include-crds", *extra
    ).stdout


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def validate_custom(obj: dict[str, Any]) -> None:
    jsonschema.validate(obj, openapi_schema(obj["kind"]))
