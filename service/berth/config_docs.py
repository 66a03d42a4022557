"""Render docs/configuration.md from the settings model, so the two cannot drift.

Regenerate with ``python -m berth.config_docs > docs/configuration.md``; a test fails when the
file and the model disagree.
"""

from __future__ import annotations

import json
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .config import Settings

HEADER = """\
# Configuration reference

Berth reads one typed settings model from three sources, highest priority first:

1. command-line flags (`berth serve --host … --port … --storage-root …`, see `berth serve --help`);
2. environment variables: `BERTH_` followed by the setting's path in capitals joined by `__`,
   e.g. `BERTH_HTTP__PORT=8080` or `BERTH_STORAGE__FILESYSTEM__ROOT=/var/lib/berth`;
3. the YAML file given with `--config FILE`, whose nesting follows the paths below.

The defaults serve a local directory (`./data`) on 127.0.0.1:5000. Unknown keys are errors.

Example:

```yaml
http:
  host: 0.0.0.0
  port: 5000
storage:
  driver: filesystem
  filesystem:
    root: /var/lib/berth
  delete_enabled: true
```

This file is generated from `service/berth/config.py` by `python -m berth.config_docs`.
"""


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return ""
    if value is None:
        return "unset"
    return f"`{json.dumps(value, default=str)}`"


def _type(field: FieldInfo) -> str:
    annotation: Any = field.annotation
    if get_origin(annotation) is Literal:
        text = " | ".join(json.dumps(a) for a in get_args(annotation))
    else:
        text = getattr(annotation, "__name__", None) or str(annotation)
        text = text.replace("typing.", "").replace("pathlib.", "")
    return text.replace("|", "\\|")


def _list_item_model(annotation: Any) -> type[BaseModel] | None:
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows: list[str] = []
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested.append((path, annotation))
            continue
        item = _list_item_model(annotation)
        if item is not None:
            # A list of sections (proxy.upstreams): its items' fields, under ``path[]``.
            nested.append((f"{path}[]", item))
        # A list item's fields have no variable of their own: the list's holds JSON.
        env = "—" if "[]" in path else "`BERTH_" + path.upper().replace(".", "__") + "`"
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{path}` | {_type(field)} | {_default(field)} | {env} | {description} |")
    for path, sub in nested:
        rows += _rows(sub, f"{path}.")
    return rows


def render() -> str:
    sections = [HEADER]
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
        sections.append(f"## `{name}`\n")
        sections.append("| setting | type | default | environment | description |")
        sections.append("|---|---|---|---|---|")
        sections.extend(_rows(annotation, f"{name}."))
        sections.append("")
    return "\n".join(sections)


if __name__ == "__main__":
    print(render(), end="")
