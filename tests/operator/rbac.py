"""The chart's RBAC for the operator, and whether a request the operator made is allowed by it.

The rules are read from ``helm template`` of charts/berth (tools/bin/helm): the role bound to the
operator's service account, as a real API server's RBAC authorizer would use them.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "berth"
RELEASE, NAMESPACE = "berth", "registry"


@dataclass(frozen=True)
class Access:
    """One API request as RBAC sees it."""

    verb: str
    group: str
    resource: str  # plural, or plural/subresource

    def __str__(self) -> str:
        return f"{self.verb} {self.resource}" + (f".{self.group}" if self.group else "")


def helm_binary() -> str | None:
    local = ROOT / "tools" / "bin" / "helm"
    return str(local) if local.is_file() else shutil.which("helm")


Rule = tuple[frozenset[str], frozenset[str], frozenset[str]]


@functools.cache
def operator_rules(*values: str) -> tuple[Rule, ...]:
    """(apiGroups, resources, verbs) of every rule granted to the operator's service account."""
    helm = helm_binary()
    if helm is None:
        raise FileNotFoundError("helm not found in tools/bin or PATH: run scripts/install-helm.sh")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": "/tmp/berth-helm/cache",
        "HELM_CONFIG_HOME": "/tmp/berth-helm/config",
        "HELM_DATA_HOME": "/tmp/berth-helm/data",
        "KUBECONFIG": "/dev/null",
    }
    rendered = subprocess.run(
        [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *values],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    accounts = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert len(accounts) == 1, "the chart renders one service account (the operator's)"
    account = accounts[0]["metadata"]["name"]
    roles = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"].endswith("Role")}
    rules: list[Rule] = []
    for binding in docs:
        if not binding["kind"].endswith("RoleBinding"):
            continue
        if not any(
            s.get("kind") == "ServiceAccount" and s.get("name") == account
            for s in binding.get("subjects") or []
        ):
            continue
        ref = binding["roleRef"]
        for rule in roles[(ref["kind"], ref["name"])].get("rules") or []:
            rules.append(
                (
                    frozenset(rule.get("apiGroups") or []),
                    frozenset(rule.get("resources") or []),
                    frozenset(rule.get("verbs") or []),
                )
            )
    return tuple(rules)


def allowed(access: Access, rules: Any) -> bool:
    return any(
        (access.group in groups or "*" in groups)
        and (access.resource in resources or "*" in resources)
        and (access.verb in verbs or "*" in verbs)
        for groups, resources, verbs in rules
    )


def access_of(request: Any) -> Access | None:
    """The RBAC verb and resource of a kmock request (None: discovery, a non-resource URL that
    every authenticated client may read)."""
    resource = request.resource
    if resource is None or not resource.plural:
        return None
    method = getattr(request.method, "value", str(request.method))
    if method == "GET":
        if request.name:
            verb = "get"
        elif request.params.get("watch") in ("true", "1"):
            verb = "watch"
        else:
            verb = "list"
    else:
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update"}.get(method, "")
        if method == "DELETE":
            verb = "delete" if request.name else "deletecollection"
    plural = f"{resource.plural}/{request.subresource}" if request.subresource else resource.plural
    return Access(verb, resource.group or "", plural)
