"""The RBAC check every operator test ends with (conftest.check_rbac) and the rules it reads."""

from __future__ import annotations

from typing import Any

import pytest
from rbac import Access, access_of, allowed, helm_binary, operator_rules

pytestmark = pytest.mark.skipif(helm_binary() is None, reason="helm not installed (tools/bin)")


def test_what_the_operator_does_is_allowed() -> None:
    rules = operator_rules()
    for access in (
        Access("watch", "", "configmaps"),
        Access("list", "batch", "cronjobs"),
        Access("create", "", "persistentvolumeclaims"),
        Access("patch", "berth.dev", "registries/status"),
        Access("patch", "batch", "jobs"),
        Access("list", "berth.dev", "garbagecollections"),
    ):
        assert allowed(access, rules), access


def test_what_it_must_not_do_is_denied() -> None:
    rules = operator_rules()
    for access in (
        Access("get", "", "secrets"),
        Access("delete", "", "persistentvolumeclaims"),
        Access("update", "berth.dev", "registries"),
        Access("deletecollection", "", "configmaps"),
        Access("create", "rbac.authorization.k8s.io", "roles"),
    ):
        assert not allowed(access, rules), access


class Request:
    def __init__(self, method: str, path: str, **params: str) -> None:
        import kmock
        from kmock._internal import parsing

        k8s = parsing.parse_path(path)
        self.resource = kmock.resource(group=k8s.group, version=k8s.version, plural=k8s.plural)
        self.method, self.name, self.subresource = method, k8s.name, k8s.subresource
        self.params: dict[str, Any] = params


def test_requests_map_to_rbac_verbs() -> None:
    cm = "/api/v1/namespaces/ns/configmaps"
    reg = "/apis/berth.dev/v1alpha1/namespaces/ns/registries"
    assert str(access_of(Request("GET", cm))) == "list configmaps"
    assert str(access_of(Request("GET", cm, watch="true"))) == "watch configmaps"
    assert str(access_of(Request("GET", f"{cm}/x"))) == "get configmaps"
    assert (
        str(access_of(Request("PATCH", f"{reg}/r/status"))) == "patch registries/status.berth.dev"
    )
    assert str(access_of(Request("DELETE", f"{cm}/x"))) == "delete configmaps"
    assert str(access_of(Request("POST", cm))) == "create configmaps"
