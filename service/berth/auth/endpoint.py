"""The built-in token endpoint, ``/auth/token``.

``GET`` is the Docker token protocol: optional Basic credentials, ``service`` and any number of
``scope`` parameters; ``POST`` is its OAuth2 form (``grant_type=password``) that containerd
tries first. Credentials are checked against the htpasswd file, the requested scopes are
intersected with the policy (asking for more than one may have is not an error: the token just
carries less), and no credentials at all get an anonymous token with what the policy allows
anonymous callers.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .policy import ANONYMOUS, Identity
from .scopes import parse_scopes
from .service import TOKEN_PATH, AuthService, parse_basic

router = APIRouter()
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _auth(request: Request) -> AuthService:
    service: AuthService = request.app.state.auth
    return service


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {"errors": [{"code": code, "message": message, "detail": None}]}
    if code in ("invalid_request", "invalid_grant", "unsupported_grant_type"):
        body = {"error": code, "error_description": message}  # type: ignore[dict-item]
    return JSONResponse(body, status_code=status, headers={**_NO_STORE, **(headers or {})})


async def _identity(auth: AuthService, user: str, password: str) -> Identity | None:
    if auth.htpasswd is None:
        auth.failed("no htpasswd file for the token endpoint")
        return None
    if not await auth.check_password(user, password):
        return None
    return auth.policies.get().identity(user)


def _issue(auth: AuthService, identity: Identity, scopes: list[str], oauth: bool) -> Response:
    assert auth.issuer is not None
    requested = parse_scopes(scopes)
    granted = auth.policies.get().grant(identity, requested)
    issued = auth.issuer.issue(identity.user or "", granted)
    auth.issued_tokens.add(1, {"anonymous": identity.anonymous})
    body: dict[str, object] = {
        "token": issued.token,
        "access_token": issued.token,
        "expires_in": issued.expires_in,
        "issued_at": issued.issued_at,
    }
    if oauth:
        body["scope"] = " ".join(a.scope() for a in granted)
        body["token_type"] = "Bearer"
    return JSONResponse(body, headers=_NO_STORE)


def _check_service(auth: AuthService, service: str | None) -> Response | None:
    if service and service != auth.settings.auth.token.service:
        return _error(400, "invalid_request", f"unknown service {service[:100]!r}")
    return None


@router.get(TOKEN_PATH)
async def token(request: Request) -> Response:
    auth = _auth(request)
    params = request.query_params
    bad = _check_service(auth, params.get("service"))
    if bad is not None:
        return bad
    identity = ANONYMOUS
    header = request.headers.get("authorization")
    if header:
        credentials = parse_basic(header)
        found = await _identity(auth, *credentials) if credentials else None
        if found is None:
            if credentials is None:
                auth.failed("malformed credentials")
            return _error(
                401,
                "UNAUTHORIZED",
                "invalid credentials",
                {"WWW-Authenticate": 'Basic realm="berth"'},
            )
        identity = found
    return _issue(auth, identity, params.getlist("scope"), oauth=False)


async def _form(request: Request) -> dict[str, list[str]]:
    """An ``application/x-www-form-urlencoded`` body (at most 64 KiB)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > 65536:
            break
    fields: dict[str, list[str]] = {}
    for key, value in parse_qsl(body[:65536].decode("utf-8", "replace")):
        fields.setdefault(key, []).append(value)
    return fields


@router.post(TOKEN_PATH)
async def oauth_token(request: Request) -> Response:
    auth = _auth(request)
    form = await _form(request)
    grant = form.get("grant_type", [""])[0]
    bad = _check_service(auth, form.get("service", [""])[0] or None)
    if bad is not None:
        return bad
    if grant != "password":
        # containerd then falls back to GET with Basic credentials.
        return _error(400, "unsupported_grant_type", "only grant_type=password is supported")
    user, password = form.get("username", [""])[0], form.get("password", [""])[0]
    found = await _identity(auth, user, password)
    if found is None:
        return _error(401, "invalid_grant", "invalid credentials")
    scopes = form.get("scope", [])
    return _issue(auth, found, scopes, oauth=True)


__all__ = ["router"]
