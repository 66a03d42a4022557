"""charts/berth/values.schema.json, generated: ``registry.spec`` is the Registry CRD's spec schema.

Regenerate after a CRD change with ``.venv/bin/python tests/chart/chart_schema.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from berth_operator.crds import openapi_schema

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "charts" / "berth" / "values.schema.json"


def strip_kubernetes_extensions(schema: Any) -> Any:
    """OpenAPI v3 (structural) to plain JSON schema: drop ``x-kubernetes-*`` keys."""
    if isinstance(schema, dict):
        out = {
            k: strip_kubernetes_extensions(v)
            for k, v in schema.items()
            if not k.startswith("x-kubernetes-")
        }
        if schema.get("x-kubernetes-preserve-unknown-fields") and "type" in out:
            out.setdefault("additionalProperties", True)
        return out
    if isinstance(schema, list):
        return [strip_kubernetes_extensions(v) for v in schema]
    return schema


def _str(**extra: Any) -> dict[str, Any]:
    return {"type": "string", **extra}


def _obj(properties: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    result: dict[str, Any] = {"type": "object", **extra}
    if properties is not None:
        result["properties"] = properties
        result["additionalProperties"] = False
    return result


def values_schema() -> dict[str, Any]:
    registry_spec = strip_kubernetes_extensions(openapi_schema("Registry")["properties"]["spec"])
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Values of the berth chart",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "image": _obj(
                {
                    "repository": _str(minLength=1),
                    "tag": _str(),
                    "pullPolicy": _str(enum=["Always", "IfNotPresent", "Never"]),
                },
                required=["repository"],
            ),
            "imagePullSecrets": {
                "type": "array",
                "items": _obj({"name": _str(minLength=1)}, required=["name"]),
            },
            "nameOverride": _str(),
            "fullnameOverride": _str(),
            "operator": _obj(
                {
                    "watchNamespaces": {"type": "array", "items": _str(minLength=1)},
                    "logFormat": _str(enum=["json", "plain", "full"]),
                    "verbose": {"type": "boolean"},
                    "resources": _obj(),
                    "podAnnotations": _obj(additionalProperties={"type": "string"}),
                    "podLabels": _obj(additionalProperties={"type": "string"}),
                    "nodeSelector": _obj(additionalProperties={"type": "string"}),
                    "tolerations": {"type": "array", "items": _obj()},
                    "affinity": _obj(),
                    "priorityClassName": _str(),
                }
            ),
            "serviceAccount": _obj(
                {
                    "create": {"type": "boolean"},
                    "name": _str(),
                    "annotations": _obj(additionalProperties={"type": "string"}),
                }
            ),
            "rbac": _obj(
                {"create": {"type": "boolean"}, "aggregateToDefaultRoles": {"type": "boolean"}}
            ),
            "registry": _obj(
                {
                    "enabled": {"type": "boolean"},
                    "name": _str(pattern="^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", maxLength=53),
                    "spec": registry_spec,
                }
            ),
        },
    }


def render() -> str:
    return json.dumps(values_schema(), indent=2) + "\n"


if __name__ == "__main__":
    SCHEMA_PATH.write_text(render())
    print(f"wrote {SCHEMA_PATH}")
