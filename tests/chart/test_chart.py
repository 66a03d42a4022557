"""The Helm chart: lint, render, and validate against Kubernetes' and the CRDs' schemas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from chart_schema import SCHEMA_PATH, render
from chart_tools import CHART, ROOT, documents, helm, template, validate_custom

from berth_operator.crds import CRD_FILES, crd_text

EXAMPLES = ROOT / "docs" / "examples"
K8S_VERSIONS = ("1.29", "1.35")
S3_VALUES = EXAMPLES / "helm-values-s3.yaml"
PROXY_VALUES = EXAMPLES / "helm-values-pull-through.yaml"


def test_lint_strict() -> None:
    result = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in result.stdout
    result = helm("lint", "--strict", str(CHART), "-f", str(S3_VALUES))
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "values",
    [
        [],
        ["-f", str(S3_VALUES)],
        ["--set", "registry.enabled=true"],
        ["-f", str(PROXY_VALUES)],
    ],
    ids=["default", "s3-auth-autoscaling", "registry-default-spec", "pull-through"],
)
def test_template_validates_against_kubernetes_schemas(values: list[str], version: str) -> None:
    """``helm template | kubernetes-validate --strict -k VERSION -``."""
    rendered = template(*values)
    command = [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, "-"]
    result = subprocess.run(command, input=rendered, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout, result.stdout
    docs = documents(rendered)
    builtin = [d for d in docs if not d["apiVersion"].startswith("berth.dev/")]
    passed = [line for line in result.stdout.splitlines() if " passed for resource " in line]
    assert len(passed) == len(builtin), result.stdout
    # Custom resources have no published schema: check them against the CRDs.
    for doc in docs:
        if doc["apiVersion"].startswith("berth.dev/"):
            validate_custom(doc)


def test_default_install_has_no_registry_and_least_privilege_rbac() -> None:
    docs = documents(template())
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "ClusterRole",  # the operator's, in the namespaces it watches (here: all)
        "ClusterRole",  # the operator's cluster-scoped needs (CRD discovery)
        "ClusterRole",  # aggregated into the default view role
        "ClusterRole",  # aggregated into the default edit and admin roles
        "ClusterRoleBinding",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "CustomResourceDefinition",
        "Deployment",
        "ServiceAccount",
    ]
    for role in (d for d in docs if d["kind"] == "ClusterRole"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]
            assert "secrets" not in rule["resources"]  # pods reference Secrets; nobody reads them
            if "persistentvolumeclaims" in rule["resources"]:
                assert "delete" not in rule["verbs"]  # registry data is never deleted
    operator = next(d for d in docs if d["kind"] == "Deployment")
    assert operator["spec"]["replicas"] == 1
    assert operator["spec"]["strategy"] == {"type": "Recreate"}
    container = operator["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][0] == "berth-operator"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_s3_values_create_a_valid_registry() -> None:
    docs = documents(template("-f", str(S3_VALUES)))
    registry = next(d for d in docs if d["kind"] == "Registry")
    assert registry["metadata"]["name"] == "berth"
    assert registry["spec"]["image"] == "ghcr.io/berth-registry/berth:0.1.0"
    assert registry["spec"]["storage"]["s3"]["bucket"] == "example-registry"
    validate_custom(registry)


def test_registry_notifications_from_values(tmp_path: Path) -> None:
    hook = {
        "name": "ci",
        "url": "https://ci.example.com/hooks",
        "secret": {"name": "ci-hook"},
        "headerSecrets": [{"header": "Authorization", "name": "ci-hook", "key": "token"}],
    }
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {"registry": {"enabled": True, "spec": {"notifications": {"endpoints": [hook]}}}}
        )
    )
    docs = documents(template("-f", str(values)))
    registry = next(d for d in docs if d["kind"] == "Registry")
    assert registry["spec"]["notifications"]["endpoints"] == [hook]
    validate_custom(registry)
    for bad in ("format=xml", "url=ftp://ci", "actions[0]=tweet"):
        result = helm(
            "template",
            "berth",
            str(CHART),
            "-f",
            str(values),
            "--set",
            f"registry.spec.notifications.endpoints[0].{bad}",
            check=False,
        )
        key = bad.split("=")[0].split("[")[0]
        assert result.returncode != 0 and f"notifications/endpoints/0/{key}" in result.stderr, bad


def test_pull_through_values_create_a_valid_registry() -> None:
    docs = documents(template("-f", str(PROXY_VALUES)))
    registry = next(d for d in docs if d["kind"] == "Registry")
    upstreams = registry["spec"]["proxy"]["upstreams"]
    assert [u["name"] for u in upstreams] == ["hub", "ghcr"]
    assert upstreams[0]["passwordSecret"] == {"name": "docker-hub", "key": "password"}
    validate_custom(registry)
    # values.schema.json holds the CRD's rules: a bad upstream URL fails at install time.
    bad = helm(
        "template",
        "berth",
        str(CHART),
        "--set",
        "registry.enabled=true",
        "--set-json",
        'registry.spec.proxy={"upstreams":[{"name":"hub","url":"ftp://x"}]}',
        check=False,
    )
    assert bad.returncode != 0 and "url" in bad.stderr, bad.stderr


def test_watching_some_namespaces() -> None:
    docs = documents(template("--set", "operator.watchNamespaces={registry,team-*}"))
    role = next(d for d in docs if d["metadata"]["name"] == "berth-operator-cluster")
    assert any("namespaces" in rule["resources"] for rule in role["rules"])
    operator = next(d for d in docs if d["kind"] == "Deployment")
    command = operator["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-4:] == ["--namespace", "registry", "--namespace", "team-*"]


def test_values_schema_rejects_bad_values() -> None:
    bad = helm(
        "template", "berth", str(CHART), "--set", "registry.spec.storage.driver=gcs", check=False
    )
    assert bad.returncode != 0 and "driver" in bad.stderr
    bad = helm("template", "berth", str(CHART), "--set", "operator.logFormat=xml", check=False)
    assert bad.returncode != 0


def test_values_schema_is_generated_from_the_crd() -> None:
    assert SCHEMA_PATH.read_text() == render(), (
        "values.schema.json is stale: run .venv/bin/python tests/chart/chart_schema.py"
    )


def test_chart_crds_are_the_operator_crds() -> None:
    for filename in CRD_FILES:
        assert (CHART / "crds" / filename).read_text() == crd_text(filename), filename


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_validate_against_the_crds(path: Path) -> None:
    docs = documents(path.read_text())
    assert docs
    if path.name.startswith("helm-values"):
        jsonschema.validate(docs[0], yaml.safe_load(SCHEMA_PATH.read_text()))
        return
    for doc in docs:
        validate_custom(doc)


@pytest.mark.parametrize("values", [[], ["-f", str(S3_VALUES)]], ids=["default", "s3"])
def test_notes_explain_access_and_containerd(values: list[str]) -> None:
    result = helm(
        "install", "berth", str(CHART), "--namespace", "registry", "--dry-run=client", *values
    )
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "hosts.toml" in notes and "docker-registry" in notes
    if values:
        assert "http://berth.registry.svc:5000" in notes and "port-forward svc/berth" in notes
    else:
        assert "kind: Registry" in notes


def test_rbac_scoped_to_watched_namespaces_and_aggregated_roles() -> None:
    everywhere = documents(template())
    kinds = {(d["kind"], d["metadata"]["name"]) for d in everywhere}
    assert ("ClusterRoleBinding", "berth-operator") in kinds
    assert ("ClusterRoleBinding", "berth-operator-cluster") in kinds
    view = next(d for d in everywhere if d["metadata"]["name"] == "berth-operator-view")
    edit = next(d for d in everywhere if d["metadata"]["name"] == "berth-operator-edit")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert {v for r in view["rules"] for v in r["verbs"]} == {"get", "list", "watch"}

    scoped = documents(
        template(
            "--set",
            "operator.watchNamespaces={team-a,team-b}",
            "--set",
            "rbac.aggregateToDefaultRoles=false",
        )
    )
    bindings = {
        (d["kind"], d["metadata"].get("namespace"), d["roleRef"]["name"])
        for d in scoped
        if d["kind"].endswith("Binding")
    }
    # The operator's rules hold in the watched namespaces only; cluster-wide just CRD discovery.
    assert bindings == {
        ("RoleBinding", "team-a", "berth-operator"),
        ("RoleBinding", "team-b", "berth-operator"),
        ("ClusterRoleBinding", None, "berth-operator-cluster"),
    }
    cluster = next(d for d in scoped if d["metadata"]["name"] == "berth-operator-cluster")
    assert {r["apiGroups"][0] for r in cluster["rules"]} == {"apiextensions.k8s.io", ""}
    assert not any(d["metadata"]["name"].endswith(("-view", "-edit")) for d in scoped)
