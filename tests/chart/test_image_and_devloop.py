"""Dockerfile, .dockerignore and skaffold.yaml, checked without a container engine."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonpatch
import jsonschema
import pytest
import yaml
from chart_tools import documents, helm

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics, enough for these patterns (last match wins)."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = fnmatch.translate(pattern.replace("**/", "")) if "**/" in pattern else None
        parts = path.split("/")
        hit = any(fnmatch.fnmatch("/".join(parts[: i + 1]), pattern) for i in range(len(parts)))
        if regex is not None:
            hit = hit or any(re.match(regex, p) for p in parts)
        if hit:
            result = not negate
    return result


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerfile_is_slim_non_root_and_ships_both_console_scripts() -> None:
    instructions = dockerfile_instructions()
    args = {
        rest.split("=")[0]: rest.split("=", 1)[1] for word, rest in instructions if word == "ARG"
    }
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", args["PYTHON_IMAGE"])
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert len(froms) == 2 and all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", users[-1])  # numeric, not root
    run = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "pip install '.[operator]'" in run  # installs the package with both console scripts
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"berth", "berth-operator"}
    cmd = json.loads(next(rest for word, rest in instructions if word == "CMD"))
    assert cmd[:2] == ["berth", "serve"]


def test_dockerignore_keeps_what_the_build_copies() -> None:
    patterns = dockerignore()
    copied = []
    for word, rest in dockerfile_instructions():
        if word == "COPY" and not rest.startswith("--from"):
            copied += rest.split()[:-1]
    assert copied, "no COPY found"
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not ignored(source, patterns), f"{source} is excluded by .dockerignore"
    for heavy in (".venv", ".git", "tools", "tests", "service/berth/__pycache__"):
        assert ignored(heavy, patterns), heavy


def skaffold() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "skaffold.yaml").read_text())  # type: ignore[no-any-return]


def test_skaffold_matches_its_schema_and_names_real_paths() -> None:
    config = skaffold()
    schema = json.loads((HERE / "skaffold-v4beta.schema.json").read_text())
    jsonschema.validate(config, schema)
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    for artifact in artifacts.values():
        context = ROOT / artifact.get("context", ".")
        assert (context / artifact["docker"]["dockerfile"]).is_file()
    values = yaml.safe_load((ROOT / "charts" / "berth" / "values.yaml").read_text())
    for profile in [None, *config.get("profiles", [])]:
        effective = config
        if profile is not None:
            jsonschema.validate(profile, schema["properties"]["profiles"]["items"])
            effective = jsonpatch.apply_patch(config, profile.get("patches", []))
        for release in effective["deploy"]["helm"]["releases"]:
            assert (ROOT / release["chartPath"] / "Chart.yaml").is_file()
            for values_file in release.get("valuesFiles", []):
                assert (ROOT / values_file).is_file(), values_file
            for key, template in release.get("setValueTemplates", {}).items():
                node = values
                for part in key.split("."):
                    node = node[part]  # the chart has this value
                for image in re.findall(r"IMAGE_(?:REPO|TAG|DIGEST)_([A-Za-z0-9_]+)", template):
                    assert image in artifacts, f"{template} names no built artifact"


@pytest.mark.parametrize("profile", [None, "s3"])
def test_skaffold_release_renders(profile: str | None) -> None:
    """What skaffold would install: the chart with its values, the image templates filled in."""
    config = skaffold()
    if profile:
        patches = next(p for p in config["profiles"] if p["name"] == profile)["patches"]
        config = jsonpatch.apply_patch(config, patches)
    release = config["deploy"]["helm"]["releases"][0]
    args = [
        "template",
        release["name"],
        str(ROOT / release["chartPath"]),
        "--namespace",
        release["namespace"],
    ]
    filled = {"{{.IMAGE_REPO_berth}}": "localhost:5000/berth", "{{.IMAGE_TAG_berth}}": "dev"}
    for key, template in release["setValueTemplates"].items():
        for placeholder, value in filled.items():
            template = template.replace(placeholder, value)
        args += ["--set-string", f"{key}={template}"]
    for key, value in release["setValues"].items():
        args += ["--set", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    for values_file in release.get("valuesFiles", []):
        args += ["-f", str(ROOT / values_file)]
    docs = documents(helm(*args).stdout)
    operator = next(d for d in docs if d["kind"] == "Deployment")
    assert operator["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "localhost:5000/berth:dev"
    )
    registry = next(d for d in docs if d["kind"] == "Registry")
    assert registry["metadata"]["namespace"] == "berth"
    assert registry["spec"]["image"] == "localhost:5000/berth:dev"
