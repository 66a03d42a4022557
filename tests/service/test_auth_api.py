"""Auth through the ASGI app: htpasswd and token modes, the token endpoint, policies, mounts,
redirects, metrics and logs. Every refused request must leave storage exactly as it was."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from berth.app import create_app
from berth.auth.htpasswd import set_user
from berth.auth.keys import generate_private_key, load_signing_key, private_pem
from berth.auth.tokens import TokenIssuer
from berth.config import Settings

from .conftest import push_image, sha256

PASSWORDS = {"alice": "alice-pw-1", "bob": "bob-pw-2", "admin": "admin-pw-3"}
POLICY = {
    "groups": {"devs": ["alice"]},
    "rules": [
        {"repositories": ["team/**"], "groups": ["devs"], "actions": ["pull", "push", "delete"]},
        {"repositories": ["team/**"], "users": ["bob"], "actions": ["pull"]},
        {"repositories": ["public/*"], "anonymous": True, "actions": ["pull"]},
        {"repositories": ["**"], "users": ["admin"], "actions": ["*"]},
        {"catalog": True, "users": ["admin"]},
    ],
}


@pytest.fixture
def auth_files(tmp_path: Path) -> dict[str, Path]:
    htpasswd = tmp_path / "htpasswd"
    for user, password in PASSWORDS.items():
        set_user(htpasswd, user, password, cost=4)
    key = tmp_path / "token.pem"
    key.write_bytes(private_pem(generate_private_key("ec")))
    policy = tmp_path / "policy.yaml"
    policy.write_text(json.dumps(POLICY))
    return {"htpasswd": htpasswd, "key": key, "policy": policy}


def auth_settings(root: Path, files: dict[str, Path], mode: str, **extra: Any) -> Settings:
    return Settings(
        storage={"filesystem": {"root": root}},
        observability={"access_log": False},
        auth={
            "mode": mode,
            "htpasswd_file": files["htpasswd"],
            "policy_file": files["policy"],
            "token": {"signing_key_file": files["key"]},
            **extra,
        },
    )


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as c:
        c.app = app  # type: ignore[attr-defined]
        yield c


def basic(user: str, password: str | None = None) -> dict[str, str]:
    raw = f"{user}:{password if password is not None else PASSWORDS[user]}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
    }


def code(r: httpx.Response) -> str:
    return r.json()["errors"][0]["code"]


async def seed(settings: Settings) -> tuple[str, bytes]:
    """An image in team/app and public/app, pushed with auth off."""
    anonymous = settings.model_copy(update={"auth": Settings().auth})
    async with app_client(anonymous) as c:
        digest, body = await push_image(c, "team/app", "v1")
        await push_image(c, "public/app", "v1")
    return digest, body


# -- htpasswd mode ---------------------------------------------------------------------------


async def test_htpasswd_mode(tmp_path: Path, auth_files: dict[str, Path]) -> None:
    root = tmp_path / "data"
    settings = auth_settings(root, auth_files, "htpasswd")
    digest, _ = await seed(settings)
    async with app_client(settings) as c:
        r = await c.get("/v2/")
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == 'Basic realm="berth"'
        assert (await c.get("/v2/", headers=basic("bob"))).status_code == 200
        r = await c.get("/v2/team/app/manifests/v1", headers=basic("bob"))
        assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == digest
        # Anonymous pull where the policy allows it, nothing elsewhere.
        assert (await c.get("/v2/public/app/manifests/v1")).status_code == 200
        r = await c.get("/v2/team/app/manifests/v1")
        assert r.status_code == 401 and "WWW-Authenticate" in r.headers
        # A push by alice (devs) works.
        await push_image(c_with(c, basic("alice")), "team/new", "v1")
        r = await c.get("/v2/_catalog", headers=basic("admin"))
        assert r.status_code == 200 and "team/new" in r.json()["repositories"]


def c_with(c: httpx.AsyncClient, headers: dict[str, str]) -> httpx.AsyncClient:
    c.headers.update(headers)
    return c


@pytest.mark.parametrize("mode", ["htpasswd", "token"])
async def test_refusals_change_nothing(
    tmp_path: Path, auth_files: dict[str, Path], mode: str
) -> None:
    root = tmp_path / "data"
    settings = auth_settings(root, auth_files, mode)
    digest, body = await seed(settings)
    key = load_signing_key(auth_files["key"])
    other_path = tmp_path / "other.pem"
    other_path.write_bytes(private_pem(generate_private_key("ec")))
    other = load_signing_key(other_path)
    issuer = TokenIssuer(key, "berth", "berth", 300)

    def token_for(name: str, *actions: str, signer: Any = key, now: float | None = None) -> str:
        access = [{"type": "repository", "name": name, "actions": list(actions)}]
        from berth.auth.scopes import Access

        return (
            TokenIssuer(signer, "berth", "berth", 300)
            .issue(
                "bob", [Access("repository", name, frozenset(a["actions"])) for a in access], now
            )
            .token
        )

    manifest_put = ("PUT", "/v2/team/app/manifests/v2", body)
    upload = ("POST", "/v2/team/app/blobs/uploads/", b"")
    cases: list[tuple[str, tuple[str, str, bytes], dict[str, str], int]] = [
        ("no credentials", manifest_put, {}, 401),
        ("no credentials, upload", upload, {}, 401),
        ("no credentials, catalog", ("GET", "/v2/_catalog", b""), {}, 401),
    ]
    if mode == "htpasswd":
        cases += [
            ("wrong password", manifest_put, basic("alice", "nope"), 401),
            ("unknown user", upload, basic("mallory", "x"), 401),
            ("pull-only user pushes", manifest_put, basic("bob"), 403),
            (
                "pull-only user deletes",
                ("DELETE", f"/v2/team/app/manifests/{digest}", b""),
                basic("bob"),
                403,
            ),
            ("name with ..", ("PUT", "/v2/team/../x/manifests/v1", body), basic("alice"), 403),
            ("catalog without the right", ("GET", "/v2/_catalog", b""), basic("alice"), 403),
            ("token in htpasswd mode", upload, bearer(issuer.issue("a", []).token), 401),
        ]
    else:
        none_token = jwt.encode(
            {
                "iss": "berth",
                "aud": "berth",
                "sub": "bob",
                "exp": int(time.time()) + 60,
                "access": [{"type": "repository", "name": "team/app", "actions": ["push"]}],
            },
            None,
            algorithm="none",
        )
        cases += [
            (
                "expired token",
                upload,
                bearer(token_for("team/app", "push", now=time.time() - 900)),
                401,
            ),
            (
                "token from another key",
                upload,
                bearer(token_for("team/app", "pull", "push", signer=other)),
                401,
            ),
            ("alg none", upload, bearer(none_token), 401),
            (
                "token for A used on B",
                ("POST", "/v2/team/other/blobs/uploads/", b""),
                bearer(token_for("team/app", "pull", "push")),
                403,
            ),
            ("pull-only token pushes", manifest_put, bearer(token_for("team/app", "pull")), 403),
            ("pull-only token uploads", upload, bearer(token_for("team/app", "pull")), 403),
            (
                "name with ..",
                ("PUT", "/v2/team/../x/manifests/v1", body),
                bearer(token_for("team/app", "pull", "push")),
                403,
            ),
            (
                "catalog without the right",
                ("GET", "/v2/_catalog", b""),
                bearer(token_for("team/app", "pull")),
                403,
            ),
            ("basic credentials in token mode", upload, basic("alice"), 401),
        ]
    async with app_client(settings) as c:
        before = snapshot(root)
        for label, (method, path, content), headers, status in cases:
            r = await c.request(method, path, content=content, headers=headers)
            assert r.status_code == status, (label, r.status_code, r.text)
            assert code(r) == ("UNAUTHORIZED" if status == 401 else "DENIED"), label
            if status == 401 or mode == "token":
                challenge = r.headers["WWW-Authenticate"]
                assert challenge.startswith("Basic " if mode == "htpasswd" else "Bearer "), label
            assert "Location" not in r.headers, label
            assert snapshot(root) == before, f"{label} changed storage"


# -- token mode ------------------------------------------------------------------------------


async def test_token_flow_and_partial_grants(tmp_path: Path, auth_files: dict[str, Path]) -> None:
    root = tmp_path / "data"
    settings = auth_settings(root, auth_files, "token")
    digest, _ = await seed(settings)
    async with app_client(settings) as c:
        r = await c.get("/v2/team/app/manifests/v1")
        assert r.status_code == 401
        challenge = r.headers["WWW-Authenticate"]
        assert challenge == (
            'Bearer realm="http://registry/auth/token",service="berth",'
            'scope="repository:team/app:pull"'
        )
        # bob asks for pull,push and for another repository: gets pull on team/app only.
        r = await c.get(
            "/auth/token",
            params=[
                ("service", "berth"),
                ("scope", "repository:team/app:pull,push"),
                ("scope", "repository:secret/x:pull registry:catalog:*"),
            ],
            headers=basic("bob"),
        )
        assert r.status_code == 200, r.text
        assert r.headers["Cache-Control"] == "no-store"
        body = r.json()
        assert body["expires_in"] == 300 and body["token"] == body["access_token"]
        claims = jwt.decode(body["token"], options={"verify_signature": False})
        assert claims["sub"] == "bob" and claims["aud"] == "berth" and claims["iss"] == "berth"
        assert claims["access"] == [{"type": "repository", "name": "team/app", "actions": ["pull"]}]
        assert claims["exp"] - claims["iat"] == 300
        token = body["token"]
        r = await c.get("/v2/team/app/manifests/v1", headers=bearer(token))
        assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == digest
        r = await c.post("/v2/team/app/blobs/uploads/", headers=bearer(token))
        assert r.status_code == 403 and code(r) == "DENIED"
        assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
        assert 'scope="repository:team/app:pull,push"' in r.headers["WWW-Authenticate"]
        # Wrong password at the endpoint: 401, no token.
        r = await c.get(
            "/auth/token",
            params={"scope": "repository:team/app:pull"},
            headers=basic("bob", "wrong"),
        )
        assert r.status_code == 401 and "token" not in r.text
        # Anonymous: a token with what anonymous callers may do (possibly nothing).
        r = await c.get(
            "/auth/token",
            params={"scope": ["repository:public/app:pull,push", "repository:team/app:pull"]},
        )
        claims = jwt.decode(r.json()["token"], options={"verify_signature": False})
        assert claims["sub"] == ""
        assert claims["access"] == [
            {"type": "repository", "name": "public/app", "actions": ["pull"]}
        ]
        anon = r.json()["token"]
        assert (await c.get("/v2/public/app/manifests/v1", headers=bearer(anon))).status_code == 200
        assert (await c.get("/v2/", headers=bearer(anon))).status_code == 200
        # Another service is refused.
        r = await c.get("/auth/token", params={"service": "other"}, headers=basic("bob"))
        assert r.status_code == 400
        # The OAuth2 form containerd tries first.
        r = await c.post(
            "/auth/token",
            data={
                "grant_type": "password",
                "username": "admin",
                "password": PASSWORDS["admin"],
                "service": "berth",
                "scope": "registry:catalog:*",
            },
        )
        assert r.status_code == 200, r.text
        admin = r.json()["access_token"]
        r = await c.get("/v2/_catalog", headers=bearer(admin))
        assert r.status_code == 200 and "team/app" in r.json()["repositories"]
        r = await c.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": "x"})
        assert r.status_code == 400
        r = await c.post(
            "/auth/token", data={"grant_type": "password", "username": "admin", "password": "bad"}
        )
        assert r.status_code == 401


async def test_token_mode_with_external_issuer_only(
    tmp_path: Path, auth_files: dict[str, Path]
) -> None:
    external = load_signing_key(auth_files["key"])
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(external.jwks()))
    settings = Settings(
        storage={"filesystem": {"root": tmp_path / "data"}},
        observability={"access_log": False},
        auth={
            "mode": "token",
            "token": {
                "realm": "https://idp.example/token",
                "issuer": "idp",
                "service": "registry.example",
                "trusted_keys_file": jwks,
            },
        },
    )
    async with app_client(settings) as c:
        r = await c.get("/v2/")
        assert r.headers["WWW-Authenticate"].startswith('Bearer realm="https://idp.example/token"')
        assert (await c.get("/auth/token")).status_code == 404  # no built-in endpoint
        from berth.auth.scopes import Access

        token = (
            TokenIssuer(external, "idp", "registry.example", 60)
            .issue("ci", [Access("repository", "x/y", frozenset({"pull", "push"}))])
            .token
        )
        r = await c.post("/v2/x/y/blobs/uploads/", headers=bearer(token))
        assert r.status_code == 202
        wrong_aud = TokenIssuer(external, "idp", "berth", 60).issue("ci", []).token
        assert (await c.get("/v2/", headers=bearer(wrong_aud))).status_code == 401


# -- mounts, redirects ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["htpasswd", "token"])
async def test_mount_needs_pull_on_the_source(
    tmp_path: Path, auth_files: dict[str, Path], mode: str
) -> None:
    root = tmp_path / "data"
    policy = {
        "rules": [
            {"repositories": ["src/*"], "users": ["alice"], "actions": ["pull"]},
            {"repositories": ["hidden/*"], "users": ["admin"], "actions": ["*"]},
            {"repositories": ["dst/*"], "users": ["alice"], "actions": ["pull", "push"]},
        ]
    }
    auth_files["policy"].write_text(json.dumps(policy))
    settings = auth_settings(root, auth_files, mode)
    anonymous = settings.model_copy(update={"auth": Settings().auth})
    layer = b"layer bytes to mount"
    digest = sha256(layer)
    async with app_client(anonymous) as c:
        for repo in ("src/a", "hidden/a"):
            r = await c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=layer)
            assert r.status_code == 201

    async with app_client(settings) as c:

        async def headers_for(*scopes: str) -> dict[str, str]:
            if mode == "htpasswd":
                return basic("alice")
            r = await c.get("/auth/token", params={"scope": list(scopes)}, headers=basic("alice"))
            return bearer(r.json()["token"])

        def linked(repo: str) -> bool:
            return (
                (root / f"docker/registry/v2/repositories/dst/{repo}/_layers/sha256")
                .joinpath(digest[7:], "link")
                .is_file()
            )

        h = await headers_for("repository:dst/one:pull,push", "repository:src/a:pull")
        r = await c.post(
            "/v2/dst/one/blobs/uploads/", params={"mount": digest, "from": "src/a"}, headers=h
        )
        assert r.status_code == 201, r.text
        assert linked("one")
        # From a repository alice cannot read: silently a normal upload session.
        h = await headers_for("repository:dst/two:pull,push", "repository:hidden/a:pull")
        r = await c.post(
            "/v2/dst/two/blobs/uploads/", params={"mount": digest, "from": "hidden/a"}, headers=h
        )
        assert r.status_code == 202, r.text
        assert "/blobs/uploads/" in r.headers["Location"]
        assert not linked("two")
        # Without `from` (automatic content discovery) nothing is mounted either.
        r = await c.post("/v2/dst/two/blobs/uploads/", params={"mount": digest}, headers=h)
        assert r.status_code == 202
        assert not linked("two")


async def test_redirect_only_after_authorization(
    tmp_path: Path, auth_files: dict[str, Path]
) -> None:
    settings = auth_settings(tmp_path / "data", auth_files, "htpasswd")
    await seed(settings)
    layer = b"redirected layer"
    async with app_client(settings.model_copy(update={"auth": Settings().auth})) as c:
        r = await c.post(
            "/v2/team/app/blobs/uploads/", params={"digest": sha256(layer)}, content=layer
        )
        assert r.status_code == 201
    async with app_client(settings) as c:
        registry = c.app.state.registry  # type: ignore[attr-defined]

        async def presigned(digest: Any, expiry: int) -> str:
            return f"https://bucket.example/{digest.hex}?X-Amz-Signature=abc"

        registry.blobs.redirect_url = presigned
        path = f"/v2/team/app/blobs/{sha256(layer)}"
        r = await c.get(path)
        assert r.status_code == 401 and "Location" not in r.headers
        r = await c.get(path, headers=basic("bob", "wrong"))
        assert r.status_code == 401 and "Location" not in r.headers
        r = await c.get(path, headers=basic("bob"))
        assert r.status_code == 307
        assert r.headers["Location"].startswith("https://bucket.example/")
        assert "Authorization" not in r.headers and "bob" not in r.headers["Location"]


# -- reloads, metrics, logs ------------------------------------------------------------------


async def test_htpasswd_and_policy_reload_without_restart(
    tmp_path: Path, auth_files: dict[str, Path]
) -> None:
    settings = auth_settings(tmp_path / "data", auth_files, "htpasswd")
    await seed(settings)
    async with app_client(settings) as c:
        service = c.app.state.auth  # type: ignore[attr-defined]
        assert (await c.get("/v2/", headers=basic("carol", "carol-pw"))).status_code == 401
        set_user(auth_files["htpasswd"], "carol", "carol-pw", cost=4)
        service.htpasswd.file.force_check()
        assert (await c.get("/v2/", headers=basic("carol", "carol-pw"))).status_code == 200
        assert (
            await c.get("/v2/team/app/tags/list", headers=basic("carol", "carol-pw"))
        ).status_code == 403
        policy = dict(POLICY, rules=[{"repositories": ["team/*"], "users": ["carol"]}])
        auth_files["policy"].write_text(json.dumps(policy))
        service.policies._file.force_check()
        assert (
            await c.get("/v2/team/app/tags/list", headers=basic("carol", "carol-pw"))
        ).status_code == 200


async def test_failed_logins_counted_and_no_secret_logged(
    tmp_path: Path, auth_files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    settings = auth_settings(
        tmp_path / "data",
        auth_files,
        "token",
    ).model_copy()
    settings.observability.access_log = True
    caplog.set_level(logging.DEBUG)
    async with app_client(settings) as c:

        def failed() -> float:
            return 0.0

        async def count() -> float:
            text = (await c.get("/metrics")).text
            total = 0.0
            for line in text.splitlines():
                if line.startswith("berth_auth_failed_logins_total{"):
                    total += float(line.rsplit(" ", 1)[1])
            return total

        before = await count()
        await c.get("/auth/token", headers=basic("alice", "guess-1"))
        await c.get("/auth/token", headers=basic("nobody", "guess-2"))
        await c.get("/v2/", headers=bearer("garbage.token.value"))
        assert await count() == before + 3
        r = await c.get(
            "/auth/token", params={"scope": "repository:team/app:pull"}, headers=basic("alice")
        )
        token = r.json()["token"]
        await c.get("/v2/team/app/tags/list", headers=bearer(token))
    logged = caplog.text + "".join(str(getattr(r, "fields", "")) for r in caplog.records)
    for secret in ("guess-1", "guess-2", PASSWORDS["alice"], token, "garbage.token.value"):
        assert secret not in logged
    assert "nobody" not in logged  # an unknown user name may be a mistyped password


async def test_anonymous_default_and_misconfiguration(tmp_path: Path) -> None:
    async with app_client(Settings(storage={"filesystem": {"root": tmp_path}})) as c:
        assert (await c.get("/v2/")).status_code == 200
        assert not hasattr(c.app.state, "auth")  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="htpasswd"):
        create_app(Settings(storage={"filesystem": {"root": tmp_path}}, auth={"mode": "htpasswd"}))
    with pytest.raises(ValueError, match="token"):
        create_app(Settings(storage={"filesystem": {"root": tmp_path}}, auth={"mode": "token"}))
    with pytest.raises(ValueError, match="HS256"):
        create_app(
            Settings(
                storage={"filesystem": {"root": tmp_path}},
                auth={
                    "mode": "token",
                    "token": {"algorithms": ["HS256"], "jwks_url": "http://x", "realm": "r"},
                },
            )
        )
