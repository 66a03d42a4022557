"""Bearer tokens of the Docker registry token protocol: issuing (the built-in endpoint) and
verifying (ours and an external issuer's).

A token is a JWT with ``iss``, ``sub``, ``aud`` (the service), ``exp``, ``nbf``, ``iat``, ``jti``
and ``access: [{type, name, actions}]``. Verification pins the algorithm to the configured
allow-list *before* looking at the signature, picks keys by ``kid`` and only keys of the
algorithm's family, and remembers a verified token for a short while, so the hot path pays
one dictionary lookup per request.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt

from .keys import KeySet, SigningKey, key_accepts
from .scopes import Access, normalize_actions

CACHE_SECONDS = 60.0
CACHE_ENTRIES = 10_000


class InvalidToken(Exception):
    """The token is not acceptable; the message says why (safe to log: no token in it)."""


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_in: int
    issued_at: str


class TokenIssuer:
    def __init__(self, key: SigningKey, issuer: str, service: str, lifetime: int) -> None:
        self.key = key
        self.issuer = issuer
        self.service = service
        self.lifetime = lifetime

    def issue(self, subject: str, access: list[Access], now: float | None = None) -> IssuedToken:
        now = int(now if now is not None else time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + self.lifetime,
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_urlsafe(18),
            "access": [a.claim() for a in access],
        }
        token = jwt.encode(
            claims,
            self.key.key,
            algorithm=self.key.algorithm,
            headers={"kid": self.key.kid, "typ": "JWT"},
        )
        issued_at = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return IssuedToken(token, self.lifetime, issued_at)


@dataclass(frozen=True)
class VerifiedToken:
    subject: str
    access: dict[tuple[str, str], frozenset[str]]
    expires: float

    def allows(self, access: Access) -> bool:
        return access.actions <= self.access.get(access.key, frozenset())


def _access_claim(value: object) -> dict[tuple[str, str], frozenset[str]]:
    if value is None:
        return {}
    if not isinstance(value, list):
        raise InvalidToken("the access claim is not a list")
    result: dict[tuple[str, str], frozenset[str]] = {}
    for item in value:
        if not isinstance(item, dict):
            raise InvalidToken("an access entry is not an object")
        t, n, actions = item.get("type"), item.get("name"), item.get("actions") or []
        if not isinstance(t, str) or not isinstance(n, str) or not isinstance(actions, list):
            raise InvalidToken("an access entry lacks type, name or actions")
        if not all(isinstance(a, str) for a in actions):
            raise InvalidToken("access actions are strings")
        key = (t, n)
        result[key] = result.get(key, frozenset()) | normalize_actions(t, actions)
    return result


class TokenVerifier:
    def __init__(
        self,
        keys: KeySet,
        algorithms: frozenset[str],
        issuer: str,
        service: str,
        leeway: int = 30,
    ) -> None:
        self.keys = keys
        self.algorithms = algorithms
        self.issuer = issuer
        self.service = service
        self.leeway = leeway
        self._cache: OrderedDict[str, tuple[VerifiedToken, float]] = OrderedDict()

    async def verify(self, token: str) -> VerifiedToken:
        now = time.time()
        hit = self._cache.get(token)
        if hit is not None:
            if hit[1] > now:
                return hit[0]
            del self._cache[token]
        verified = await self._verify(token, now)
        until = min(verified.expires, now + CACHE_SECONDS)
        self._cache[token] = (verified, until)
        if len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return verified

    async def _verify(self, token: str, now: float) -> VerifiedToken:
        if len(token) > 16_384:
            raise InvalidToken("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken("malformed token") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidToken(f"algorithm {str(alg)[:20]!r} is not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("kid is not a string")
        candidates = [k for k in await self.keys.keys(kid) if key_accepts(k.key, alg)]
        if not candidates:
            raise InvalidToken("no trusted key for this token")
        last: Exception | None = None
        for candidate in candidates:
            try:
                claims = jwt.decode(
                    token,
                    candidate.key,
                    algorithms=[alg],
                    audience=self.service,
                    issuer=self.issuer,
                    leeway=self.leeway,
                    options={"require": ["exp", "iss", "aud"], "verify_iat": False},
                )
                break
            except jwt.InvalidSignatureError as exc:
                last = exc
                continue
            except jwt.ExpiredSignatureError as exc:
                raise InvalidToken("token expired") from exc
            except jwt.ImmatureSignatureError as exc:
                raise InvalidToken("token not yet valid") from exc
            except jwt.PyJWTError as exc:
                raise InvalidToken(f"token rejected: {type(exc).__name__}") from exc
        else:
            raise InvalidToken("signature does not verify with any trusted key") from last
        subject = claims.get("sub", "")
        if not isinstance(subject, str):
            raise InvalidToken("sub is not a string")
        return VerifiedToken(subject, _access_claim(claims.get("access")), float(claims["exp"]))


__all__ = ["InvalidToken", "IssuedToken", "TokenIssuer", "TokenVerifier", "VerifiedToken"]
