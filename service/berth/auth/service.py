"""The authorization decision: who is calling (Basic or Bearer credentials) and whether the
policy (htpasswd mode) or the token (token mode) allows what the request needs.

Errors are the registry's typed errors: UNAUTHORIZED (401) with a ``WWW-Authenticate``
challenge when the caller should (re)authenticate, DENIED (403) when a logged-in user simply
lacks the right. In token mode a valid token without the needed scope answers 403 with a
challenge carrying ``error="insufficient_scope"`` and the scope (RFC 6750 §3.1), so a client
that reuses one token fetches a wider one; CNCF Distribution answers 401 there, which oras-py
cannot recover from.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from pathlib import Path

from opentelemetry import metrics

from ..config import Settings
from ..registry.errors import Denied, Unauthorized
from .htpasswd import Htpasswd
from .keys import KeySet, check_algorithms, load_signing_key, parse_trusted_keys, public_pem
from .policy import ANONYMOUS, Identity, PolicySource
from .scopes import PULL, PUSH, REPOSITORY, Access, Requirement
from .tokens import InvalidToken, TokenIssuer, TokenVerifier

log = logging.getLogger("berth.auth")
TOKEN_PATH = "/auth/token"


@dataclass(frozen=True)
class Decision:
    """The caller, and whether a requested cross-repository mount may go ahead."""

    identity: Identity
    mount_allowed: bool = True


def parse_basic(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def parse_bearer(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class AuthService:
    def __init__(self, settings: Settings) -> None:
        auth = settings.auth
        self.mode = auth.mode
        self.settings = settings
        self.policies = PolicySource(auth)
        self.htpasswd: Htpasswd | None = None
        self.issuer: TokenIssuer | None = None
        self.verifier: TokenVerifier | None = None
        token = auth.token
        if auth.htpasswd_file is not None:
            self.htpasswd = Htpasswd(Path(auth.htpasswd_file))
        if self.mode == "htpasswd" and self.htpasswd is None:
            raise ValueError("auth.mode htpasswd needs auth.htpasswd_file (--htpasswd-file)")
        if self.mode == "token":
            algorithms = check_algorithms(token.algorithms)
            static = []
            if token.signing_key_file is not None:
                signing = load_signing_key(token.signing_key_file)
                self.issuer = TokenIssuer(
                    signing, token.issuer, token.service, token.lifetime_seconds
                )
                static = parse_trusted_keys(public_pem(signing.public))
            if not static and token.trusted_keys_file is None and token.jwks_url is None:
                raise ValueError(
                    "auth.mode token needs auth.token.signing_key_file (--token-key) or "
                    "trusted keys (auth.token.trusted_keys_file or auth.token.jwks_url)"
                )
            if self.issuer is None and not token.realm:
                raise ValueError("auth.token.realm is required when tokens come from elsewhere")
            keys = KeySet(
                static, token.trusted_keys_file, token.jwks_url, token.jwks_refresh_seconds
            )
            self.verifier = TokenVerifier(
                keys, algorithms, token.issuer, token.service, token.leeway_seconds
            )
        meter = metrics.get_meter("berth")
        self.failed_logins = meter.create_counter(
            "berth_auth_failed_logins",
            description="Rejected credentials: wrong passwords, unknown users, bad tokens",
        )
        self.issued_tokens = meter.create_counter(
            "berth_auth_tokens_issued", description="Tokens issued by the built-in endpoint"
        )

    # -- challenges ------------------------------------------------------------------------------

    def realm(self, scheme: str, host: str | None) -> str:
        token = self.settings.auth.token
        if token.realm:
            return token.realm
        base = self.settings.http.base_url
        if base:
            return f"{base.rstrip('/')}{TOKEN_PATH}"
        return f"{scheme}://{host or '127.0.0.1'}{TOKEN_PATH}"

    def challenge(
        self, scheme: str, host: str | None, access: Access | None, error: str | None = None
    ) -> str:
        if self.mode == "htpasswd":
            return 'Basic realm="berth"'
        parts = [
            f'realm="{_quote(self.realm(scheme, host))}"',
            f'service="{_quote(self.settings.auth.token.service)}"',
        ]
        if access is not None:
            if PUSH in access.actions:
                # Ask for pull too, as CNCF Distribution does: clients that keep one token per
                # repository (oras-py) need both for a push; pull is still not required.
                access = Access(access.type, access.name, access.actions | {PULL})
            parts.append(f'scope="{_quote(access.scope())}"')
        if error:
            parts.append(f'error="{error}"')
        return "Bearer " + ",".join(parts)

    def failed(self, reason: str, user: str | None = None) -> None:
        self.failed_logins.add(1, {"mode": self.mode, "reason": reason})
        # The user name only when it is a real user: a mistyped password can land in it.
        fields = {"reason": reason, "user": user} if user else {"reason": reason}
        log.info("authentication failed: %s", reason, extra={"fields": fields})

    # -- the decision ----------------------------------------------------------------------------

    async def check_password(self, user: str, password: str) -> bool:
        assert self.htpasswd is not None
        ok, exists = await self.htpasswd.verify(user, password)
        if not ok:
            self.failed("wrong password" if exists else "unknown user", user if exists else None)
        return ok

    async def authorize(
        self, authorization: str | None, requirement: Requirement, scheme: str, host: str | None
    ) -> Decision:
        if self.mode == "htpasswd":
            return await self._authorize_basic(authorization, requirement, scheme, host)
        return await self._authorize_token(authorization, requirement, scheme, host)

    def _unauthorized(
        self,
        scheme: str,
        host: str | None,
        access: Access | None,
        message: str,
        error: str | None = None,
    ) -> Unauthorized:
        challenge = self.challenge(scheme, host, access, error)
        return Unauthorized(message, headers={"WWW-Authenticate": challenge})

    async def _authorize_basic(
        self, authorization: str | None, req: Requirement, scheme: str, host: str | None
    ) -> Decision:
        policy = self.policies.get()
        identity = ANONYMOUS
        if authorization:
            credentials = parse_basic(authorization)
            if credentials is None:
                self.failed("malformed credentials")
                raise self._unauthorized(scheme, host, req.access, "invalid credentials")
            user, password = credentials
            if not await self.check_password(user, password):
                raise self._unauthorized(scheme, host, req.access, "invalid credentials")
            identity = policy.identity(user)
        access = req.access
        if access is None:
            if identity.anonymous:
                raise self._unauthorized(scheme, host, None, "authentication required")
            return Decision(identity)
        allowed = policy.allowed(identity, access.type, access.name)
        if not access.actions <= allowed:
            if identity.anonymous:
                raise self._unauthorized(scheme, host, access, "authentication required")
            raise Denied(f"access to {access.scope()} is denied")
        mount_ok = True
        if req.mount:
            mount_ok = req.mount_from is not None and PULL in policy.allowed(
                identity, REPOSITORY, req.mount_from
            )
        return Decision(identity, mount_ok)

    async def _authorize_token(
        self, authorization: str | None, req: Requirement, scheme: str, host: str | None
    ) -> Decision:
        assert self.verifier is not None
        token = parse_bearer(authorization) if authorization else None
        if token is None:
            raise self._unauthorized(scheme, host, req.access, "authentication required")
        try:
            verified = await self.verifier.verify(token)
        except InvalidToken as exc:
            self.failed(f"invalid token: {exc}")
            raise self._unauthorized(
                scheme, host, req.access, "invalid token", "invalid_token"
            ) from None
        identity = Identity(verified.subject or None)
        access = req.access
        if access is not None and not verified.allows(access):
            # RFC 6750 §3.1: a valid token without the scope is 403, with a challenge naming
            # the scope, so clients that keep one token (oras-py) fetch a wider one.
            challenge = self.challenge(scheme, host, access, "insufficient_scope")
            raise Denied(
                f"the token does not grant {access.scope()}",
                headers={"WWW-Authenticate": challenge},
            )
        mount_ok = True
        if req.mount:
            mount_ok = req.mount_from is not None and verified.allows(
                Access(REPOSITORY, req.mount_from, frozenset({PULL}))
            )
        return Decision(identity, mount_ok)


__all__ = ["TOKEN_PATH", "AuthService", "Decision", "parse_basic", "parse_bearer"]
