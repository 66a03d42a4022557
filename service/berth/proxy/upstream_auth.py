"""Upstream authentication as registries use it: a ``WWW-Authenticate`` challenge, then Basic
credentials or a Bearer token from the challenge's realm (Docker Hub, GHCR, Quay, Berth),
scoped tokens cached until shortly before they expire."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

_PARAM_RE = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')
# A token is used until this fraction of its lifetime has passed (clock skew, slow requests).
TOKEN_USE_FRACTION = 0.9
DEFAULT_TOKEN_SECONDS = 60  # the distribution token spec's default ``expires_in``
TOKEN_CACHE_ENTRIES = 4096


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # "bearer" or "basic", lower-case
    params: dict[str, str]

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")


def parse_challenge(header: str | None) -> Challenge | None:
    """The first challenge of a ``WWW-Authenticate`` header (registries send one)."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _PARAM_RE.finditer(rest)
    }
    return Challenge(scheme.lower(), params)


class TokenCache:
    """Bearer tokens by scope, each until ``TOKEN_USE_FRACTION`` of its lifetime."""

    def __init__(self) -> None:
        self._tokens: dict[str, tuple[str, float]] = {}

    def get(self, scope: str) -> str | None:
        entry = self._tokens.get(scope)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._tokens[scope]
            return None
        return entry[0]

    def put(self, scope: str, token: str, expires_in: float | None) -> None:
        lifetime = expires_in if expires_in and expires_in > 0 else DEFAULT_TOKEN_SECONDS
        if len(self._tokens) >= TOKEN_CACHE_ENTRIES:
            self._tokens.clear()  # bounded; refilled on demand
        self._tokens[scope] = (token, time.monotonic() + lifetime * TOKEN_USE_FRACTION)


def token_from_answer(answer: object) -> tuple[str, float | None]:
    """(token, expires_in) from a token endpoint's JSON; ValueError when there is none."""
    if not isinstance(answer, dict):
        raise ValueError("token endpoint answered no JSON object")
    token = answer.get("token") or answer.get("access_token")
    if not isinstance(token, str) or not token:
        raise ValueError("token endpoint answered no token")
    expires = answer.get("expires_in")
    return token, float(expires) if isinstance(expires, int | float) else None


__all__ = ["Challenge", "TokenCache", "parse_challenge", "token_from_answer"]
