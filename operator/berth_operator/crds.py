"""The CRD manifests shipped with the operator, and the API server's defaulting, done locally.

The API server fills in a custom resource's schema defaults before the operator sees it; the
operator applies the same defaults again (a no-op on a real cluster) so that builders never depend
on them and unit tests can start from sparse specs.
"""

from __future__ import annotations

import copy
from functools import cache
from importlib import resources
from typing import Any

import yaml

CRD_FILES = ("registries.berth.dev.yaml", "garbagecollections.berth.dev.yaml")


@cache
def load_crds() -> dict[str, dict[str, Any]]:
    """CRD manifests keyed by kind (``Registry``, ``GarbageCollection``)."""
    result: dict[str, dict[str, Any]] = {}
    for filename in CRD_FILES:
        text = resources.files("berth_operator").joinpath("crds", filename).read_text()
        crd = yaml.safe_load(text)
        result[crd["spec"]["names"]["kind"]] = crd
    return result


def crd_text(filename: str) -> str:
    return resources.files("berth_operator").joinpath("crds", filename).read_text()


def openapi_schema(kind: str, version: str = "v1alpha1") -> dict[str, Any]:
    crd = load_crds()[kind]
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            return copy.deepcopy(entry["schema"]["openAPIV3Schema"])
    raise KeyError(f"{kind} has no version {version}")


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Return ``value`` with the schema's defaults filled in, top-down, as the API server does."""
    if not isinstance(value, dict) or schema.get("type") != "object":
        if isinstance(value, list) and isinstance(schema.get("items"), dict):
            return [apply_defaults(schema["items"], item) for item in value]
        return value
    result = dict(value)
    for key, sub in schema.get("properties", {}).items():
        if key not in result and "default" in sub:
            result[key] = copy.deepcopy(sub["default"])
        if key in result:
            result[key] = apply_defaults(sub, result[key])
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in list(result):
            if key not in schema.get("properties", {}):
                result[key] = apply_defaults(extra, result[key])
    return result


def defaulted_spec(kind: str, spec: dict[str, Any] | None) -> dict[str, Any]:
    schema = openapi_schema(kind)["properties"]["spec"]
    return apply_defaults(schema, dict(spec or {}))  # type: ignore[no-any-return]
