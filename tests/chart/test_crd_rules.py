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


def violations(kind: str, obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Messages of the rules ``obj`` breaks; with ``old``, an update (transition rules, those
    with ``oldSelf``, run only where the old object has the field, as on the API server)."""
    schema = openapi_schema(kind)
    obj = apply_defaults(schema, {"metadata": {"name": "example"}, **obj})
    if old is not None:
        old = apply_defaults(schema, {"metadata": {"name": "example"}, **old})
    env = celpy.Environment()
    messages = []
    for path, rule, message in rules(schema):
        value = at(obj, path)
        if value is None:
            continue
        activation = {"self": celpy.json_to_cel(value)}
        if "oldSelf" in rule:
            old_value = at(old, path) if old is not None else None
            if old_value is None:
                continue
            activation["oldSelf"] = celpy.json_to_cel(old_value)
        program = env.program(env.compile(rule))
        result = program.evaluate(activation)
        assert isinstance(result, celpy.celtypes.BoolType), f"{rule!r} gave {result!r}"
        if not result:
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
        (
            {
                "proxy": {
                    "upstreams": [
                        {"name": "hub", "url": "https://registry-1.docker.io"},
                        {"name": "hub", "url": "https://ghcr.io"},
                    ]
                }
            },
            "proxy.upstreams names must be unique",
        ),
    ],
)
def test_rules_reject_bad_specs(spec: dict[str, Any], message: str) -> None:
    found = violations("Registry", {"spec": spec})
    assert any(message in m for m in found), found


def test_rules_accept_the_defaults() -> None:
    assert violations("Registry", {"spec": {}}) == []
    token = {"mode": "token", "token": {"jwksURL": "https://issuer/jwks"}}
    assert violations("Registry", {"spec": {"auth": token}}) == []


# --------------------------------------------------------------------------- issue 11 rules

RWO = {"storage": {"driver": "filesystem", "filesystem": {"accessMode": "ReadWriteOnce"}}}
RWX = {"storage": {"driver": "filesystem", "filesystem": {"accessMode": "ReadWriteMany"}}}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({**RWO, "replicas": 2}, "a ReadWriteOnce volume serves a single replica"),
        ({**RWO, "autoscaling": {"enabled": True}}, "a ReadWriteOnce volume serves a single"),
        ({"replicas": 3}, "a ReadWriteOnce volume"),  # the defaults are a ReadWriteOnce volume
        (
            {
                "storage": {"driver": "s3", "s3": {"bucket": "b"}},
                "config": {"storage": {"driver": "filesystem"}},
            },
            "config.storage.driver contradicts storage.driver",
        ),
        ({"config": {"storage": {"driver": "s3"}}}, "config.storage.driver contradicts"),
    ],
)
def test_rules_reject_contradictions(spec: dict[str, Any], message: str) -> None:
    found = violations("Registry", {"spec": spec})
    assert any(message in m for m in found), found


@pytest.mark.parametrize(
    "spec",
    [
        {**RWO, "replicas": 1},
        {**RWX, "replicas": 3},
        {**RWX, "autoscaling": {"enabled": True}},
        {"storage": {"driver": "s3", "s3": {"bucket": "b"}}, "replicas": 5},
        {"config": {"storage": {"driver": "filesystem", "filesystem": {"root": "/x"}}}},
        {"config": {"cache": {"manifest_bytes": 1}}},
    ],
)
def test_rules_accept_consistent_specs(spec: dict[str, Any]) -> None:
    assert violations("Registry", {"spec": spec}) == []


def test_storage_driver_is_immutable() -> None:
    s3 = {"spec": {"storage": {"driver": "s3", "s3": {"bucket": "b"}}}}
    fs = {"spec": {}}
    assert violations("Registry", s3) == []  # a create: no old object
    found = violations("Registry", s3, old=fs)
    assert any("storage.driver cannot be changed" in m for m in found), found
    assert violations("Registry", s3, old=s3) == []
    assert violations("Registry", {"spec": {"replicas": 1}}, old=fs) == []


@pytest.mark.parametrize(("kind", "limit"), [("Registry", 56), ("GarbageCollection", 49)])
def test_names_leave_room_for_derived_names(kind: str, limit: int) -> None:
    spec = {"registryRef": {"name": "r"}} if kind == "GarbageCollection" else {}
    assert violations(kind, {"metadata": {"name": "n" * limit}, "spec": spec}) == []
    found = violations(kind, {"metadata": {"name": "n" * (limit + 1)}, "spec": spec})
    assert any("metadata.name must be at most" in m for m in found), found


@pytest.mark.parametrize(
    ("schedule", "ok"),
    [
        ("0 3 * * *", True),
        ("*/15 0-6 1,15 JAN-MAR MON-FRI", True),
        ("@daily", True),
        ("0 3 * * ?", True),
        ("0 3 * *", False),
        ("0 3 * * * *", False),
        ("TZ=UTC 0 3 * * *", False),
        ("@sometimes", False),
        ("0 3 * * * ; rm", False),
    ],
)
def test_gc_schedule_shape(schedule: str, ok: bool) -> None:
    spec = {"registryRef": {"name": "r"}, "schedule": schedule}
    found = violations("GarbageCollection", {"spec": spec})
    assert (found == []) is ok, found


@pytest.mark.parametrize(
    ("zone", "ok"),
    [
        ("UTC", True),
        ("Europe/Paris", True),
        ("America/Argentina/Buenos_Aires", True),
        ("Etc/GMT+5", True),
        ("Europe/", False),
        ("../etc/passwd", False),
        ("", False),
    ],
)
def test_gc_time_zone_shape(zone: str, ok: bool) -> None:
    spec = {"registryRef": {"name": "r"}, "schedule": "@daily", "timeZone": zone}
    found = violations("GarbageCollection", {"spec": spec})
    assert (found == []) is ok, found


def test_string_rules_have_bounded_inputs() -> None:
    """The API server estimates each rule's cost from the schema: a regex over a string without
    maxLength can exceed the budget and the CRD is refused at install."""

    def walk(schema: dict[str, Any], path: str) -> list[str]:
        bad = []
        for rule in schema.get("x-kubernetes-validations", []):
            regex = ".matches(" in rule["rule"] and schema.get("type") == "string"
            if regex and "maxLength" not in schema:
                bad.append(path)
        for key, sub in (schema.get("properties") or {}).items():
            bad += walk(sub, f"{path}.{key}")
        return bad

    for kind in ("Registry", "GarbageCollection"):
        assert walk(openapi_schema(kind), kind) == []
