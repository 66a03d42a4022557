"""Repository policies: who may pull, push and delete where, and who may list the catalog.

For a repository, the rules whose glob matches it are taken most specific first (more literal
characters, then fewer wildcards, then the order they were written in). A logged-in user gets
the actions of the first of them that names the user (``users``, ``groups``, or ``users: ["*"]``)
plus what anonymous callers get: the actions of the first rule with ``anonymous: true``.
Without any rule at all, every authenticated user may do everything and anonymous callers
nothing (the behaviour of an htpasswd-protected CNCF Distribution).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import AuthSettings, PolicyRuleSettings
from ..globs import glob_to_regex
from ..registry.errors import RegistryError
from ..registry.names import validate_name
from .files import WatchedFile
from .scopes import (
    CATALOG,
    REGISTRY,
    REPOSITORY,
    REPOSITORY_ACTIONS,
    WILDCARD,
    Access,
    normalize_actions,
)

NOTHING: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Identity:
    """Who is asking: ``user`` None is an anonymous caller."""

    user: str | None
    groups: frozenset[str] = frozenset()

    @property
    def anonymous(self) -> bool:
        return self.user is None


ANONYMOUS = Identity(None)


def specificity(glob: str) -> tuple[int, int]:
    literal = sum(1 for c in glob if c not in "*?")
    return (literal, -glob.count("*") - glob.count("?"))


@dataclass(frozen=True)
class _Entry:
    pattern: re.Pattern[str] | None  # None: the catalog
    users: frozenset[str]
    groups: frozenset[str]
    anonymous: bool
    actions: frozenset[str]

    def names(self, identity: Identity) -> bool:
        if identity.user is None:
            return False
        return (
            identity.user in self.users
            or WILDCARD in self.users
            or not self.groups.isdisjoint(identity.groups)
        )


class Policy:
    def __init__(
        self,
        rules: Iterable[PolicyRuleSettings] = (),
        groups: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.rules = list(rules)
        self.open_to_users = not self.rules
        self._members: dict[str, set[str]] = {}
        for group, members in (groups or {}).items():
            for member in members:
                self._members.setdefault(member, set()).add(group)
        ranked: list[tuple[tuple[int, int], int, _Entry]] = []
        for index, rule in enumerate(self.rules):
            users, groups_ = frozenset(rule.users), frozenset(rule.groups)
            if rule.catalog:
                entry = _Entry(None, users, groups_, rule.anonymous, frozenset({WILDCARD}))
                ranked.append(((0, 0), index, entry))
            actions = normalize_actions(REPOSITORY, rule.actions)
            for glob in rule.repositories:
                entry = _Entry(glob_to_regex(glob), users, groups_, rule.anonymous, actions)
                ranked.append((specificity(glob), index, entry))
        ranked.sort(key=lambda item: (-item[0][0], -item[0][1], item[1]))
        self._entries = [entry for _, _, entry in ranked]
        self._cache: OrderedDict[tuple[str | None, str, str], frozenset[str]] = OrderedDict()

    def identity(self, user: str | None) -> Identity:
        if user is None:
            return ANONYMOUS
        return Identity(user, frozenset(self._members.get(user, ())))

    def allowed(self, identity: Identity, resource_type: str, name: str) -> frozenset[str]:
        """The actions ``identity`` may perform on a resource."""
        key = (identity.user, resource_type, name)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        result = self._evaluate(identity, resource_type, name)
        self._cache[key] = result
        if len(self._cache) > 8192:
            self._cache.popitem(last=False)
        return result

    def _evaluate(self, identity: Identity, resource_type: str, name: str) -> frozenset[str]:
        if resource_type == REGISTRY:
            if name != CATALOG:
                return NOTHING
            if self.open_to_users:
                return NOTHING if identity.anonymous else frozenset({WILDCARD})
            return self._first(identity, lambda e: e.pattern is None)
        if resource_type != REPOSITORY:
            return NOTHING
        try:
            validate_name(name)  # never grant on a name the registry would refuse (``..``)
        except RegistryError:
            return NOTHING
        if self.open_to_users:
            return NOTHING if identity.anonymous else REPOSITORY_ACTIONS
        return self._first(
            identity, lambda e: e.pattern is not None and e.pattern.fullmatch(name) is not None
        )

    def _first(self, identity: Identity, matches: Any) -> frozenset[str]:
        mine: frozenset[str] | None = None if not identity.anonymous else NOTHING
        everyone: frozenset[str] | None = None
        for entry in self._entries:
            if not matches(entry):
                continue
            if everyone is None and entry.anonymous:
                everyone = entry.actions
            if mine is None and entry.names(identity):
                mine = entry.actions
            if mine is not None and everyone is not None:
                break
        return (mine or NOTHING) | (everyone or NOTHING)

    def grant(self, identity: Identity, requested: Iterable[Access]) -> list[Access]:
        """Requested scopes intersected with the policy; what is not allowed is left out."""
        granted = []
        for access in requested:
            allowed = self.allowed(identity, access.type, access.name)
            if access.type == REGISTRY:
                actions = access.actions & allowed
            else:
                actions = (access.actions - {WILDCARD}) & allowed
                if WILDCARD in access.actions and allowed >= REPOSITORY_ACTIONS:
                    actions |= {WILDCARD}
            if actions:
                granted.append(Access(access.type, access.name, actions))
        return granted


def parse_policy_document(data: bytes) -> Policy:
    document = yaml.safe_load(data) or {}
    if not isinstance(document, dict):
        raise ValueError("a policy file is a mapping with `groups` and `rules`")
    unknown = set(document) - {"groups", "rules"}
    if unknown:
        raise ValueError(f"unknown keys in the policy file: {sorted(unknown)}")
    settings = AuthSettings.model_validate(
        {"groups": document.get("groups") or {}, "rules": document.get("rules") or []}
    )
    return Policy(settings.rules, settings.groups)


class PolicySource:
    """The policy in force: from ``auth.policy_file`` (re-read when it changes) or inline."""

    def __init__(self, settings: AuthSettings) -> None:
        self._file: WatchedFile[Policy] | None = None
        self._inline: Policy | None = None
        if settings.policy_file is not None:
            self._file = WatchedFile(Path(settings.policy_file), parse_policy_document)
        else:
            self._inline = Policy(settings.rules, settings.groups)

    def get(self) -> Policy:
        if self._file is not None:
            return self._file.get()
        assert self._inline is not None
        return self._inline


__all__ = [
    "ANONYMOUS",
    "Identity",
    "Policy",
    "PolicySource",
    "glob_to_regex",
    "parse_policy_document",
]
