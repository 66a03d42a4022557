"""Chart and dev loop for the serving half of issue 11: RBAC for the new kinds, NOTES and docs
without the 127.0.0.1:<NodePort> recipe, skaffold's remote flow pushing the image."""

from __future__ import annotations

from pathlib import Path

import jsonpatch
import yaml
from chart_tools import CHART, ROOT, documents, helm, template, validate_custom

EXAMPLE = ROOT / "docs" / "examples" / "registry-serving.yaml"


def rules() -> list[dict[str, object]]:
    """The rules of every role bound to the operator (not the aggregated user roles)."""
    docs = documents(template())
    bound = {d["roleRef"]["name"] for d in docs if d["kind"].endswith("Binding")}
    return [
        rule
        for d in docs
        if d["kind"] == "ClusterRole" and d["metadata"]["name"] in bound
        for rule in d["rules"]
    ]


def verbs(group: str, resource: str) -> set[str]:
    found: set[str] = set()
    for rule in rules():
        if group in rule["apiGroups"] and resource in rule["resources"]:  # type: ignore[operator]
            found |= set(rule["verbs"])  # type: ignore[call-overload]
    return found


def test_rbac_covers_the_serving_objects_and_no_more() -> None:
    for group, resource in [
        ("apps", "daemonsets"),
        ("networking.k8s.io", "networkpolicies"),
        ("gateway.networking.k8s.io", "httproutes"),
        ("cert-manager.io", "certificates"),
    ]:
        assert {"get", "create", "patch", "delete"} <= verbs(group, resource), resource
        assert "update" not in verbs(group, resource)
    # The CRD schema-version check at start-up reads the installed CRDs.
    assert "get" in verbs("apiextensions.k8s.io", "customresourcedefinitions")
    assert not verbs("apiextensions.k8s.io", "customresourcedefinitions") & {
        "create",
        "patch",
        "update",
        "delete",
    }


def test_notes_and_docs_drop_the_loopback_nodeport_recipe() -> None:
    result = helm("install", "berth", str(CHART), "--namespace", "registry", "--dry-run=client")
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "127.0.0.1:30500" not in notes and "nodeSetup" in notes
    for doc in ("kubernetes.md", "operations.md"):
        text = (ROOT / "docs" / doc).read_text()
        assert "http://127.0.0.1:30500" not in text, doc


def test_a_registry_with_every_serving_option_installs_from_values(tmp_path: Path) -> None:
    spec = yaml.safe_load(EXAMPLE.read_text())["spec"]
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"registry": {"enabled": True, "spec": spec}}))
    docs = documents(template("-f", str(values)))
    registry = next(d for d in docs if d["kind"] == "Registry")
    validate_custom(registry)
    assert registry["spec"]["nodeSetup"] == {"enabled": True}


def test_skaffold_remote_profile_pushes_the_image() -> None:
    text = (ROOT / "skaffold.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["build"]["local"]["push"] is False  # a local cluster sees the local image
    profile = next(p for p in config["profiles"] if p["name"] == "remote")
    remote = jsonpatch.apply_patch(config, profile["patches"])
    assert remote["build"]["local"]["push"] is True
    assert remote["deploy"]["helm"]["releases"][0]["setValues"]["image.pullPolicy"] == "Always"
    assert "-p remote --default-repo=" in text  # how to run it, in the file itself
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    assert "skaffold dev -p remote --default-repo=" in docs
