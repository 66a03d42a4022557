"""The CRDs' CEL validation rules (x-kubernetes-validations): they compile, accept the examples
and reject what they are meant to reject, evaluated with cel-python as the API server would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml

from berth_operator.crds import apply_defaults, openapi_schema

ROOT = Path(__file__).resolve().parents[2]


def rules(schema: dict[str, Any], path: str = "") -> list[tuple[str, str, str]]:
    """(path, rule, message) for every rule in ``schema``."""
    found = [(path, r["rule"], r["message"]) for r in schema.get("x-kubernetes-validations", [])]
    for key, sub in (schema.get("properties") or {}).items():
        found += rules(sub, f"{path}.{key}" if path else key)
    return found


def at(obj: Any, path: str) -> Any:
    for part in path.split(".") if path else []:
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def violations(kind: str, obj: dict[str, Any]) -> list[str]:
    schema = openapi_schema(kind)
    obj = apply_defaults(schema, obj)
    env = celpy.Environment()
    messages = []
    for path, rule, message in rules(schema):
        value = at(obj, path)
        if value is None:
            continue
        program = env.program(env.compile(rule))
        if not program.evaluate({"self": celpy.json_to_cel(value)}):
            messages.append(message)
    return messages


def test_there_are_rules() -> None:
    assert len(rules(openapi_schema("Registry"))) >= 5


@pytest.mark.parametrize(
    "path", sorted((ROOT / "docs" / "examples").glob("registry-*.yaml")), ids=lambda p: p.name
)
def test_examples_pass_the_rules(path: Path) -> None:
    assert violations("Registry", yaml.safe_load(path.read_text())) == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"storage": {"driver": "s3"}}, "storage.s3.bucket is required"),
        ({"storage": {"driver": "s3", "s3": {"region": "x"}}}, "storage.s3.bucket is required"),
        ({"auth": {"mode": "htpasswd"}}, "auth.htpasswd is required"),
        ({"auth": {"mode": "token", "token": {"realm": "https://a"}}}, "auth.token needs"),
        ({"ingress": {"enabled": True}}, "ingress.host is required"),
        ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}, "minReplicas"),
    ],
)
def test_rules_reject_bad_specs(spec: dict[str, Any], message: str) -> None:
    found = violations("Registry", {"spec": spec})
    assert any(message in m for m in found), found


def test_rules_accept_the_defaults() -> None:
    assert violations("Registry", {"spec": {}}) == []
    token = {"mode": "token", "token": {"jwksURL": "https://issuer/jwks"}}
    assert violations("Registry", {"spec": {"auth": token}}) == []
