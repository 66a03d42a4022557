"""The architecture, checked: data flows one way (HTTP -> registry -> storage), and the
storage drivers are opaque key stores that know nothing of the registry's file names."""

from __future__ import annotations

import ast
from pathlib import Path

import berth

PACKAGE = Path(berth.__file__).parent
UPPER = ("api", "registry", "gc", "auth", "app", "cli")
# Names of the registry layout a driver must never test a key against.
LAYOUT_NAMES = ("_manifests", "_layers", "_uploads", "startedat", "hashstates", "current")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against the file's package
                base = path.relative_to(PACKAGE.parent).parent.parts
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, module]) if module else ".".join(base)
            found.add(module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_storage_imports_nothing_above_it() -> None:
    for path in (PACKAGE / "storage").rglob("*.py"):
        for module in _imports(path):
            parts = module.split(".")
            assert not (parts[0] == "berth" and len(parts) > 1 and parts[1] in UPPER), (
                f"{path.relative_to(PACKAGE)} imports {module}"
            )


def test_drivers_do_not_know_the_layout() -> None:
    drivers = [PACKAGE / "storage" / "filesystem.py", *(PACKAGE / "storage" / "s3").glob("*.py")]
    for path in drivers:
        strings = [
            node.value
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        ]
        for name in LAYOUT_NAMES:
            assert not any(s == name or f"/{name}" in s for s in strings), (path, name)
        assert "paths" not in {m.rsplit(".", 1)[-1] for m in _imports(path)}, path
