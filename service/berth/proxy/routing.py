"""Which upstream a request is for: by repository prefix or by containerd's ``ns`` query.

Both routes lead to one name, the prefixed one (``hub/library/nginx``): a mirror request
(``/v2/library/nginx/...?ns=docker.io``) has its path rewritten to it before authorization and
routing, so access policies, storage and the cache only ever see prefixed names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..auth.policy import glob_to_regex
from ..config import UpstreamSettings
from ..registry.errors import NameUnknown

# The registry routes' trailing words after ``/v2/<name>/`` (as in api/*.py); the name is
# matched greedily, like Starlette's ``{name:path}``.
_PATH_RE = re.compile(
    r"^/v2/(?P<name>.+)/(?P<tail>manifests/[^/]+|blobs/uploads/[^/]*|blobs/[^/]+|tags/list"
    r"|referrers/[^/]+)$"
)
DOCKER_HUB = "docker.io"


@dataclass(frozen=True, slots=True)
class Route:
    upstream: UpstreamSettings
    remote: str  # the repository's name at the upstream

    @property
    def label(self) -> str:
        return self.upstream.name


class Routing:
    def __init__(self, upstreams: list[UpstreamSettings]) -> None:
        self.by_name = {u.name: u for u in upstreams}
        self.by_namespace = {u.resolved_namespace: u for u in upstreams}
        self._allowed = {
            u.name: [glob_to_regex(g) for g in u.repositories] for u in upstreams if u.repositories
        }

    def __bool__(self) -> bool:
        return bool(self.by_name)

    def proxied(self, name: str) -> bool:
        """Whether ``name`` lies in an upstream's namespace (where pushes are refused)."""
        return name.partition("/")[0] in self.by_name

    def route(self, name: str) -> Route | None:
        """The upstream and remote name of a (prefixed) repository; None for local ones."""
        first, _, rest = name.partition("/")
        upstream = self.by_name.get(first)
        if upstream is None:
            return None
        if not rest:
            raise NameUnknown(f"{name!r} is the upstream {first!r} itself, not a repository in it")
        patterns = self._allowed.get(first)
        if patterns is not None and not any(p.fullmatch(rest) for p in patterns):
            raise NameUnknown(f"repository {rest!r} is not mirrored from upstream {first!r}")
        return Route(upstream, rest)

    def rewrite(self, path: str, namespace: str | None) -> str | None:
        """The path with the prefixed name, or None when it stays as it is.

        ``namespace`` is the ``ns`` query parameter: a mirror request for that registry, which
        NAME_UNKNOWN answers when no upstream has it (containerd then tries its next host).
        Docker Hub's implicit ``library/`` is added to one-component names.
        """
        match = _PATH_RE.match(path)
        if match is None:
            return None
        name, tail = match.group("name"), match.group("tail")
        if namespace:
            upstream = self.by_namespace.get(namespace)
            if upstream is None:
                raise NameUnknown(f"no upstream is configured for the namespace {namespace!r}")
            remote = name
        else:
            first, _, remote = name.partition("/")
            upstream = self.by_name.get(first)
            if upstream is None or not remote:
                return None
        if upstream.resolved_namespace == DOCKER_HUB and "/" not in remote:
            remote = f"library/{remote}"
        rewritten = f"/v2/{upstream.name}/{remote}/{tail}"
        return None if rewritten == path else rewritten


__all__ = ["Route", "Routing"]
