"""Auth building blocks: scopes, the route→scope table, policies, htpasswd, keys, tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from berth.api import base, blobs, listing, manifests, referrers, uploads
from berth.auth import htpasswd as ht
from berth.auth.keys import (
    KeySet,
    check_algorithms,
    generate_private_key,
    libtrust_kid,
    load_signing_key,
    parse_jwks,
    parse_trusted_keys,
    private_pem,
    public_pem,
)
from berth.auth.policy import ANONYMOUS, Policy, glob_to_regex, parse_policy_document
from berth.auth.scopes import (
    CATALOG_ACCESS,
    KNOWN_ROUTES,
    Access,
    parse_scope,
    parse_scopes,
    requirement,
)
from berth.auth.tokens import InvalidToken, TokenIssuer, TokenVerifier
from berth.config import PolicyRuleSettings

# -- scopes ----------------------------------------------------------------------------------


def test_parse_scope_forms() -> None:
    assert parse_scope("repository:team/app:pull,push") == Access(
        "repository", "team/app", frozenset({"pull", "push"})
    )
    # A name with a host and port, and Docker's resource class syntax.
    assert parse_scope("repository:host:5000/app:pull").name == "host:5000/app"
    assert parse_scope("repository(plugin):x:pull").type == "repository"
    assert parse_scope("repository:x:*").actions == {"*", "pull", "push", "delete"}
    assert parse_scope("registry:catalog:*") == CATALOG_ACCESS
    assert parse_scope("nonsense") is None
    merged = parse_scopes(["repository:a:pull repository:b:push", "repository:a:push"])
    assert {a.name: a.actions for a in merged} == {"a": {"pull", "push"}, "b": {"push"}}


def test_every_api_route_has_a_scope() -> None:
    """The scope table must know every /v2 route; a new route fails here, not in production."""
    seen = set()
    for module in (base, blobs, listing, manifests, referrers, uploads):
        table = getattr(module, "routes", None) or module.router  # RouteTable or APIRouter
        for route in table.routes:
            path = getattr(route, "path", "")
            if path.startswith("/v2"):
                seen.add(path)
                assert path in KNOWN_ROUTES, f"{path} has no entry in berth.auth.scopes"
                for method in getattr(route, "methods", ()):
                    req = requirement(path, method, {"name": "x"}, {})
                    if path == "/v2/":
                        assert req.access is None
                    else:
                        assert req.access is not None and req.access.actions, (path, method)
    assert seen == KNOWN_ROUTES


@pytest.mark.parametrize(
    ("template", "method", "actions"),
    [
        ("/v2/{name:path}/manifests/{reference}", "GET", {"pull"}),
        ("/v2/{name:path}/manifests/{reference}", "HEAD", {"pull"}),
        ("/v2/{name:path}/manifests/{reference}", "PUT", {"push"}),
        ("/v2/{name:path}/manifests/{reference}", "DELETE", {"delete"}),
        ("/v2/{name:path}/blobs/{digest}", "DELETE", {"delete"}),
        ("/v2/{name:path}/blobs/uploads/{upload_id}", "PATCH", {"push"}),
        ("/v2/{name:path}/tags/list", "GET", {"pull"}),
        # Unknown method or route with a name: every action (fail closed).
        ("/v2/{name:path}/manifests/{reference}", "POST", {"pull", "push", "delete"}),
        ("/v2/{name:path}/something/{x}", "GET", {"pull", "push", "delete"}),
    ],
)
def test_requirement_table(template: str, method: str, actions: set[str]) -> None:
    req = requirement(template, method, {"name": "a/b"}, {})
    assert req.access is not None
    assert req.access.name == "a/b"
    assert req.access.actions == actions


def test_mount_requirement_names_the_source() -> None:
    req = requirement("/v2/{name:path}/blobs/uploads/", "POST", {"name": "t"}, {"mount": "d"})
    assert req.mount and req.mount_from is None
    req = requirement(
        "/v2/{name:path}/blobs/uploads/", "POST", {"name": "t"}, {"mount": "d", "from": "s"}
    )
    assert req.access == Access("repository", "t", frozenset({"push"}))
    assert (req.mount, req.mount_from) == (True, "s")
    assert requirement("/v2/_catalog", "GET", {}, {}).access == CATALOG_ACCESS


# -- policy ----------------------------------------------------------------------------------


def _rules(*rules: dict) -> list[PolicyRuleSettings]:
    return [PolicyRuleSettings.model_validate(r) for r in rules]


def test_glob_semantics() -> None:
    assert glob_to_regex("team/*").fullmatch("team/app")
    assert not glob_to_regex("team/*").fullmatch("team/a/b")
    assert glob_to_regex("team/**").fullmatch("team/a/b")
    assert not glob_to_regex("team/**").fullmatch("other/team/a")
    assert glob_to_regex("app-?").fullmatch("app-1")
    assert not glob_to_regex("a.b").fullmatch("aXb")  # literal dots


def test_policy_specificity_groups_and_anonymous() -> None:
    policy = Policy(
        _rules(
            {"repositories": ["**"], "users": ["*"], "actions": ["pull"]},
            {"repositories": ["team/**"], "groups": ["devs"], "actions": ["pull", "push"]},
            {"repositories": ["team/secret"], "users": ["alice"], "actions": ["*"]},
            {"repositories": ["team/secret"], "groups": ["devs"], "actions": []},
            {"repositories": ["public/*"], "anonymous": True, "actions": ["pull"]},
            {"catalog": True, "users": ["admin"]},
        ),
        {"devs": ["alice", "bob"]},
    )
    alice, bob, carol = (policy.identity(u) for u in ("alice", "bob", "carol"))
    assert policy.allowed(alice, "repository", "team/app") == {"pull", "push"}
    assert policy.allowed(alice, "repository", "team/secret") == {"pull", "push", "delete", "*"}
    assert policy.allowed(bob, "repository", "team/secret") == set()  # specific rule wins
    assert policy.allowed(carol, "repository", "team/app") == {"pull"}  # falls to "**"
    assert policy.allowed(ANONYMOUS, "repository", "team/app") == set()
    assert policy.allowed(ANONYMOUS, "repository", "public/app") == {"pull"}
    assert policy.allowed(ANONYMOUS, "repository", "public/a/b") == set()
    # Logged-in users keep what anonymous callers get.
    assert policy.allowed(bob, "repository", "public/app") == {"pull"}
    assert policy.allowed(policy.identity("admin"), "registry", "catalog") == {"*"}
    assert policy.allowed(alice, "registry", "catalog") == set()
    # Names the registry refuses are never granted, whatever the globs say.
    assert policy.allowed(alice, "repository", "team/../secret") == set()
    assert policy.allowed(alice, "repository", "team//app") == set()


def test_policy_grant_is_an_intersection() -> None:
    policy = Policy(_rules({"repositories": ["a/*"], "users": ["u"], "actions": ["pull"]}))
    u = policy.identity("u")
    requested = parse_scopes(["repository:a/x:pull,push repository:b/x:pull registry:catalog:*"])
    assert policy.grant(u, requested) == [Access("repository", "a/x", frozenset({"pull"}))]
    assert policy.grant(u, parse_scopes(["repository:a/x:*"]))[0].actions == {"pull"}


def test_default_policy_lets_every_user_do_everything() -> None:
    policy = Policy()
    u = policy.identity("u")
    assert policy.allowed(u, "repository", "any/thing") == {"pull", "push", "delete"}
    assert policy.allowed(u, "registry", "catalog") == {"*"}
    assert policy.allowed(ANONYMOUS, "repository", "any/thing") == set()


def test_policy_file_document() -> None:
    policy = parse_policy_document(
        b"groups: {ci: [robot]}\nrules:\n- repositories: ['apps/**']\n  groups: [ci]\n"
        b"  actions: [pull, push]\n"
    )
    assert policy.allowed(policy.identity("robot"), "repository", "apps/x/y") == {"pull", "push"}
    with pytest.raises(ValueError):
        parse_policy_document(b"rulez: []\n")


# -- htpasswd --------------------------------------------------------------------------------


def test_htpasswd_add_check_remove(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    assert ht.set_user(path, "alice", "pw-one", cost=4)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    line = path.read_text().strip()
    assert line.startswith("alice:$2y$04$")  # Apache/Distribution-compatible prefix
    store = ht.Htpasswd(path, check_seconds=0)
    assert store.check("alice", "pw-one") == (True, True)
    assert store.check("alice", "pw-two") == (False, True)
    assert store.check("mallory", "pw-one") == (False, False)
    assert store.check("alice", "x" * 100) == (False, True)
    # Re-read on change: a new password, then a removed user.
    assert not ht.set_user(path, "alice", "pw-two", cost=4)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert store.check("alice", "pw-one") == (False, True)  # cached success forgotten
    assert store.check("alice", "pw-two") == (True, True)
    assert ht.remove_user(path, "alice")
    assert not ht.remove_user(path, "alice")
    assert store.check("alice", "pw-two") == (False, False)


def test_htpasswd_ignores_non_bcrypt_and_checks_apache_entries(tmp_path: Path) -> None:
    import bcrypt

    apache = b"$2y$" + bcrypt.hashpw(b"pw", bcrypt.gensalt(4))[4:]
    data = b"# comment\nmd5:$apr1$abc$def\nplain:secret\nbob:" + apache + b"\n"
    entries = ht.parse_htpasswd(data)
    assert list(entries) == ["bob"]
    assert ht.check_password("pw", entries["bob"])


def test_htpasswd_rejects_bad_names_and_passwords(tmp_path: Path) -> None:
    for bad in ("", "a:b", "a\nb", " a"):
        with pytest.raises(ht.HtpasswdError):
            ht.set_user(tmp_path / "h", bad, "pw", cost=4)
    with pytest.raises(ht.HtpasswdError):
        ht.set_user(tmp_path / "h", "a", "x" * 73, cost=4)


def test_htpasswd_unknown_user_costs_a_bcrypt(tmp_path: Path) -> None:
    path = tmp_path / "h"
    ht.set_user(path, "alice", "pw", cost=8)
    store = ht.Htpasswd(path)
    t0 = time.perf_counter()
    store.check("alice", "wrong")
    known = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.check("nobody", "wrong")
    unknown = time.perf_counter() - t0
    assert unknown > known / 3, (known, unknown)  # same work, same order of time


# -- keys ------------------------------------------------------------------------------------


def test_keygen_kinds(tmp_path: Path) -> None:
    for kind, alg in (("ec", "ES256"), ("rsa", "RS256")):
        path = tmp_path / f"{kind}.pem"
        path.write_bytes(private_pem(generate_private_key(kind, 2048)))
        key = load_signing_key(path)
        assert key.algorithm == alg
        assert key.jwks()["keys"][0]["kid"] == key.kid
        # Public JWKS round-trips to a key with the same kid.
        (trusted,) = parse_jwks(key.jwks())
        assert key.kid in trusted.kids


def test_trusted_keys_formats_and_no_symmetric_keys() -> None:
    priv = generate_private_key("ec")
    pub = priv.public_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pub)
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(priv, hashes.SHA256())
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    bundle = public_pem(generate_private_key("ec").public_key()) + cert.public_bytes(Encoding.PEM)
    keys = parse_trusted_keys(bundle)
    assert len(keys) == 2
    assert libtrust_kid(pub) in keys[1].kids
    assert len(libtrust_kid(pub).split(":")) == 12
    jwks = json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}]}).encode()
    assert parse_trusted_keys(jwks) == []
    for bad in (["none"], ["HS256"], [], ["ES256", "HS512"]):
        with pytest.raises(ValueError):
            check_algorithms(bad)


# -- tokens ----------------------------------------------------------------------------------


def _signing(tmp_path: Path, kind: str = "ec", name: str = "key.pem"):
    path = tmp_path / name
    path.write_bytes(private_pem(generate_private_key(kind, 2048)))
    return load_signing_key(path)


def _verifier(*keys, algorithms=("ES256", "RS256")) -> TokenVerifier:
    static = [k for s in keys for k in parse_trusted_keys(public_pem(s.public))]
    return TokenVerifier(KeySet(static), frozenset(algorithms), "berth", "berth", leeway=0)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_token_round_trip_and_claims(tmp_path: Path) -> None:
    key = _signing(tmp_path)
    issuer = TokenIssuer(key, "berth", "berth", 300)
    access = [Access("repository", "a/b", frozenset({"pull"}))]
    issued = issuer.issue("alice", access)
    claims = jwt.decode(issued.token, options={"verify_signature": False})
    assert set(claims) == {"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "access"}
    assert claims["access"] == [{"type": "repository", "name": "a/b", "actions": ["pull"]}]
    assert jwt.get_unverified_header(issued.token)["kid"] == key.kid
    verified = await _verifier(key).verify(issued.token)
    assert verified.subject == "alice"
    assert verified.allows(access[0])
    assert not verified.allows(Access("repository", "a/b", frozenset({"push"})))
    assert not verified.allows(Access("repository", "a/c", frozenset({"pull"})))


async def test_tokens_that_must_be_refused(tmp_path: Path) -> None:
    key = _signing(tmp_path)
    other = _signing(tmp_path, name="other.pem")
    verifier = _verifier(key)
    now = time.time()
    claims = {"iss": "berth", "sub": "a", "aud": "berth", "exp": int(now) + 300, "access": []}

    async def refused(token: str, why: str) -> None:
        with pytest.raises(InvalidToken, match=why):
            await verifier.verify(token)

    await refused(TokenIssuer(key, "berth", "berth", 60).issue("a", [], now - 3600).token, "exp")
    await refused(TokenIssuer(other, "berth", "berth", 60).issue("a", []).token, "trusted key")
    await refused(jwt.encode(claims, None, algorithm="none"), "algorithm")
    await refused(TokenIssuer(key, "evil", "berth", 60).issue("a", []).token, "rejected")
    await refused(TokenIssuer(key, "berth", "other", 60).issue("a", []).token, "rejected")
    # Algorithm confusion: HS256 keyed with the public key's PEM (the classic attack).
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    body = _b64(json.dumps(claims).encode())
    mac = hmac.new(public_pem(key.public), f"{header}.{body}".encode(), hashlib.sha256)
    await refused(f"{header}.{body}.{_b64(mac.digest())}", "algorithm")
    # RS256 claimed with an EC key id: no key of that family.
    rsa_verifier = _verifier(key, algorithms=("RS256",))
    with pytest.raises(InvalidToken):
        await rsa_verifier.verify(TokenIssuer(key, "berth", "berth", 60).issue("a", []).token)
    await refused("not.a.token", "malformed")
    # A tampered access claim breaks the signature.
    good = TokenIssuer(key, "berth", "berth", 60).issue("a", []).token
    h, _, s = good.split(".")
    forged = dict(claims, access=[{"type": "repository", "name": "x", "actions": ["push"]}])
    await refused(f"{h}.{_b64(json.dumps(forged).encode())}.{s}", "signature")


async def test_external_issuer_from_jwks_file(tmp_path: Path) -> None:
    external = _signing(tmp_path, "rsa")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(external.jwks()))
    verifier = TokenVerifier(KeySet(file=jwks), frozenset({"RS256"}), "idp", "berth")
    token = TokenIssuer(external, "idp", "berth", 60).issue("robot", []).token
    assert (await verifier.verify(token)).subject == "robot"
