"""Access scopes (``repository:NAME:pull,push``) and the one table that says which scope each
request of the OCI API needs.

The table is keyed by the FastAPI route template the request matched, so the authorization
layer sees exactly the routing the routers see; a route missing from the table needs every
action (fail closed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

PULL, PUSH, DELETE = "pull", "push", "delete"
REPOSITORY_ACTIONS = frozenset({PULL, PUSH, DELETE})
WILDCARD = "*"
REPOSITORY = "repository"
REGISTRY = "registry"
CATALOG = "catalog"


def normalize_actions(resource_type: str, actions: Iterable[str]) -> frozenset[str]:
    """Actions as a set; ``*`` on a repository means every repository action."""
    result = {a.strip() for a in actions if a and a.strip()}
    if resource_type == REPOSITORY and WILDCARD in result:
        result |= REPOSITORY_ACTIONS
    return frozenset(result)


@dataclass(frozen=True)
class Access:
    """One resource and a set of actions on it (what a token's ``access`` entry holds)."""

    type: str
    name: str
    actions: frozenset[str] = field(default_factory=frozenset)

    @property
    def key(self) -> tuple[str, str]:
        return (self.type, self.name)

    def scope(self) -> str:
        return f"{self.type}:{self.name}:{','.join(sorted(self.actions))}"

    def claim(self) -> dict[str, object]:
        return {"type": self.type, "name": self.name, "actions": sorted(self.actions)}


CATALOG_ACCESS = Access(REGISTRY, CATALOG, frozenset({WILDCARD}))


def parse_scope(text: str) -> Access | None:
    """``type[(class)]:name:actions`` as an Access; None when it is not a scope at all.

    The name may itself contain ``:`` (a host with a port), so type is split off the front
    and actions off the back.
    """
    resource_type, sep, rest = text.strip().partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not resource_type or not name:
        return None
    resource_type = resource_type.split("(", 1)[0]  # "repository(plugin)" → "repository"
    return Access(resource_type, name, normalize_actions(resource_type, actions.split(",")))


def parse_scopes(values: Iterable[str]) -> list[Access]:
    """Every scope of every ``scope`` parameter (each may hold several, space-separated)."""
    merged: dict[tuple[str, str], set[str]] = {}
    for value in values:
        for item in value.split():
            access = parse_scope(item)
            if access is not None:
                merged.setdefault(access.key, set()).update(access.actions)
    return [Access(t, n, frozenset(a)) for (t, n), a in merged.items()]


@dataclass(frozen=True)
class Requirement:
    """What a request needs: ``access`` (None: only being authenticated), and for a
    cross-repository mount the repository the blob is mounted from (pull on it, or no mount)."""

    access: Access | None
    mount_from: str | None = None
    mount: bool = False


AUTHENTICATED = Requirement(None)

# route template → method → actions needed on the ``name`` path parameter.
_REPOSITORY_ROUTES: dict[str, dict[str, str]] = {
    "/v2/{name:path}/manifests/{reference}": {
        "GET": PULL,
        "HEAD": PULL,
        "PUT": PUSH,
        "DELETE": DELETE,
    },
    "/v2/{name:path}/blobs/{digest}": {"GET": PULL, "HEAD": PULL, "DELETE": DELETE},
    "/v2/{name:path}/blobs/uploads/": {"POST": PUSH},
    "/v2/{name:path}/blobs/uploads/{upload_id}": {
        "GET": PUSH,
        "PATCH": PUSH,
        "PUT": PUSH,
        "DELETE": PUSH,
    },
    "/v2/{name:path}/tags/list": {"GET": PULL, "HEAD": PULL},
    "/v2/{name:path}/referrers/{digest}": {"GET": PULL, "HEAD": PULL},
}
_REGISTRY_ROUTES: dict[str, Requirement] = {
    "/v2/": AUTHENTICATED,
    "/v2/_catalog": Requirement(CATALOG_ACCESS),
}
KNOWN_ROUTES = frozenset(_REPOSITORY_ROUTES) | frozenset(_REGISTRY_ROUTES)


def requirement(
    template: str | None,
    method: str,
    params: Mapping[str, str],
    query: Mapping[str, str],
) -> Requirement:
    """The access one request needs, from the route it matched (None: no route matched)."""
    fixed = _REGISTRY_ROUTES.get(template or "")
    if fixed is not None:
        return fixed
    name = params.get("name")
    if name is None:
        # Unknown (or unmatched) route without a repository: the strongest registry right.
        return Requirement(CATALOG_ACCESS) if template else AUTHENTICATED
    action = _REPOSITORY_ROUTES.get(template or "", {}).get(method)
    actions = frozenset({action}) if action else REPOSITORY_ACTIONS  # fail closed
    access = Access(REPOSITORY, name, actions)
    if action == PUSH and template == "/v2/{name:path}/blobs/uploads/" and "mount" in query:
        return Requirement(access, mount_from=query.get("from") or None, mount=True)
    return Requirement(access)


__all__ = [
    "AUTHENTICATED",
    "CATALOG_ACCESS",
    "KNOWN_ROUTES",
    "Access",
    "Requirement",
    "normalize_actions",
    "parse_scope",
    "parse_scopes",
    "requirement",
]
