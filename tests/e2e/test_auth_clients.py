"""A private registry with real clients: skopeo ``--creds``, ``ctr images pull --user`` (what a
kubelet does with an image pull secret), ``helm registry login`` + push and oras-py login + push,
against a real ``berth serve`` in htpasswd mode and in token mode (built-in token endpoint).

The oras CLI is not installable here (not on PyPI, npm or Debian); the PyPI ``oras`` client
(oras-py) stands in for it. In htpasswd mode it needs its ``basic`` auth backend; its default
``token`` backend only speaks the Bearer protocol.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .conftest import BerthFactory, Containerd, Server, Skopeo, require_tool, run
from .ocilayout import OCILayout
from .test_helm import _helm_env

pytestmark = pytest.mark.e2e

USERS = {"alice": "alice-Pw-7f3a", "puller": "puller-Pw-19cd", "admin": "admin-Pw-c0de"}
POLICY = {
    "rules": [
        # alice, a developer or CI robot: read-write on apps and charts.
        {"repositories": ["apps/**", "charts/**"], "users": ["alice"], "actions": ["*"]},
        # puller, the robot behind the cluster's image pull secret: read-only.
        {"repositories": ["apps/**"], "users": ["puller"], "actions": ["pull"]},
        {"repositories": ["public/*"], "anonymous": True, "actions": ["pull"]},
        {"repositories": ["**"], "users": ["admin"], "actions": ["*"]},
        {"catalog": True, "users": ["admin"]},
    ]
}


@dataclass
class AuthFiles:
    htpasswd: Path
    key: Path
    policy: Path


@dataclass
class Private:
    mode: str
    server: Server
    files: AuthFiles

    @property
    def host(self) -> str:
        return self.server.host


def berth_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    exe = require_tool("berth")
    proc = subprocess.run([exe, *args], input=stdin, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc


@pytest.fixture(scope="module")
def auth_files(tmp_path_factory: pytest.TempPathFactory) -> AuthFiles:
    """Users added with ``berth user add``, a key from ``berth keygen``, a policy file."""
    base = tmp_path_factory.mktemp("auth")
    htpasswd = base / "htpasswd"
    for user, password in USERS.items():
        berth_cli(
            "user",
            "add",
            user,
            "--htpasswd-file",
            str(htpasswd),
            "--password-stdin",
            "--cost",
            "6",
            stdin=password + "\n",
        )
    assert (htpasswd.stat().st_mode & 0o777) == 0o600
    key = base / "token.pem"
    out = berth_cli("keygen", "--out", str(key)).stdout
    assert "ES256" in out
    policy = base / "policy.yaml"
    policy.write_text(json.dumps(POLICY))
    return AuthFiles(htpasswd, key, policy)


def _flags(mode: str, files: AuthFiles) -> list[str]:
    flags = ["--auth", mode, "--htpasswd-file", str(files.htpasswd), "--policy", str(files.policy)]
    if mode == "token":
        flags += ["--token-key", str(files.key)]
    return flags


@pytest.fixture(scope="module", params=["htpasswd", "token"])
def private(
    request: pytest.FixtureRequest, berth_factory: BerthFactory, auth_files: AuthFiles
) -> Iterator[Private]:
    server = berth_factory.start(args=_flags(request.param, auth_files))
    yield Private(request.param, server, auth_files)
    server.stop()


def _image(tmp_path: Path, tag: str = "v1") -> tuple[OCILayout, str]:
    src = OCILayout(tmp_path / f"src-{uuid.uuid4().hex[:6]}")
    image = src.add_image(layers=2)
    src.tag(image.descriptor, tag)
    return src, image.digest


def _creds(user: str) -> str:
    return f"{user}:{USERS[user]}"


def _repo(prefix: str) -> str:
    return f"{prefix}/img-{uuid.uuid4().hex[:8]}"


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
    }


# -- skopeo ----------------------------------------------------------------------------------


def test_skopeo_with_creds(tmp_path: Path, private: Private, skopeo: Skopeo) -> None:
    src, digest = _image(tmp_path)
    repo = _repo("apps")
    ref = f"docker://{private.host}/{repo}:v1"
    # Without credentials, and with a wrong password, the push is refused.
    for extra in ([], ["--dest-creds", "alice:wrong"], ["--dest-creds", _creds("puller")]):
        proc = run(
            [
                skopeo.path,
                "--policy",
                str(skopeo.policy),
                "copy",
                "--authfile",
                str(skopeo.authfile),
                "--dest-tls-verify=false",
                *extra,
                f"oci:{src.path}:v1",
                ref,
            ],
            check=False,
        )
        assert proc.returncode != 0, extra
    assert not (private.server.root / "docker/registry/v2/repositories" / repo).exists()

    skopeo.copy(f"oci:{src.path}:v1", ref, "--dest-creds", _creds("alice"), "--preserve-digests")
    out = tmp_path / "back"
    skopeo.copy(ref, f"oci:{out}:v1", "--src-creds", _creds("puller"))
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == digest
    # skopeo inspect with the read-only robot sees the tag; anonymous does not.
    proc = run(
        [
            skopeo.path,
            "list-tags",
            "--tls-verify=false",
            "--creds",
            _creds("puller"),
            f"docker://{private.host}/{repo}",
        ]
    )
    assert json.loads(proc.stdout)["Tags"] == ["v1"]
    proc = run(
        [
            skopeo.path,
            "list-tags",
            "--tls-verify=false",
            "--no-creds",
            f"docker://{private.host}/{repo}",
        ],
        check=False,
    )
    assert proc.returncode != 0


# -- containerd: the kubelet's image pull secret ---------------------------------------------


def test_ctr_pull_with_user(
    tmp_path: Path, private: Private, skopeo: Skopeo, containerd: Containerd
) -> None:
    src, digest = _image(tmp_path)
    repo = _repo("apps")
    ref = f"{private.host}/{repo}:v1"
    skopeo.copy(
        f"oci:{src.path}:v1",
        f"docker://{ref}",
        "--dest-creds",
        _creds("alice"),
        "--preserve-digests",
    )
    denied = containerd.ctr("images", "pull", "--plain-http", ref, check=False)
    assert denied.returncode != 0
    wrong = containerd.ctr(
        "images", "pull", "--plain-http", "--user", "puller:nope", ref, check=False
    )
    assert wrong.returncode != 0
    containerd.ctr(
        "images",
        "pull",
        "--plain-http",
        "--platform",
        "linux/amd64",
        "--user",
        _creds("puller"),
        ref,
    )
    listed = containerd.ctr("images", "ls").stdout
    assert ref in listed and digest in listed
    containerd.ctr("images", "rm", "--sync", ref, check=False)


# -- helm --------------------------------------------------------------------------------------


def test_helm_registry_login_and_push(tmp_path: Path, private: Private) -> None:
    helm = require_tool("helm")
    env = _helm_env(tmp_path)
    name = f"auth-{uuid.uuid4().hex[:8]}"
    run([helm, "create", name], cwd=tmp_path, env=env)
    run(
        [helm, "package", name, "--version", "1.2.3", "-d", str(tmp_path / "pkg")],
        cwd=tmp_path,
        env=env,
    )
    chart = tmp_path / "pkg" / f"{name}-1.2.3.tgz"

    def helm_run(*args: str, stdin: str | None = None, check: bool = True):
        proc = subprocess.run(
            [helm, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            env={**__import__("os").environ, **env},
        )
        if check:
            assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc

    bad = helm_run(
        "registry",
        "login",
        private.host,
        "--username",
        "alice",
        "--password-stdin",
        "--plain-http",
        stdin="wrong\n",
        check=False,
    )
    assert bad.returncode != 0
    pushed = helm_run(
        "push", str(chart), f"oci://{private.host}/charts", "--plain-http", check=False
    )
    assert pushed.returncode != 0  # not logged in
    helm_run(
        "registry",
        "login",
        private.host,
        "--username",
        "alice",
        "--password-stdin",
        "--plain-http",
        stdin=USERS["alice"] + "\n",
    )
    pushed = helm_run("push", str(chart), f"oci://{private.host}/charts", "--plain-http")
    digest = re.search(r"Digest:\s*(sha256:[0-9a-f]{64})", pushed.stdout + pushed.stderr)
    assert digest, pushed.stderr
    out = tmp_path / "pulled"
    out.mkdir()
    helm_run(
        "pull",
        f"oci://{private.host}/charts/{name}",
        "--version",
        "1.2.3",
        "--plain-http",
        "-d",
        str(out),
    )
    assert (out / chart.name).read_bytes() == chart.read_bytes()
    helm_run("registry", "logout", private.host)


# -- oras ---------------------------------------------------------------------------------------


def test_oras_login_and_push(tmp_path: Path, private: Private) -> None:
    oras_client = pytest.importorskip("oras.client")
    backend = "basic" if private.mode == "htpasswd" else "token"
    work = tmp_path / "work"
    work.mkdir()
    blob = work / "sbom.json"
    blob.write_text(json.dumps({"sbom": uuid.uuid4().hex}))
    repo = _repo("apps")
    target = f"{private.host}/{repo}:sbom"

    client = oras_client.OrasClient(hostname=private.host, insecure=True, auth_backend=backend)
    client.session.trust_env = False
    client.login(
        username="alice",
        password=USERS["alice"],
        hostname=private.host,
        config_path=str(tmp_path / "oras-auth.json"),
    )
    resp = client.push(
        target=target, files=[f"{blob}:application/json"], disable_path_validation=True, quiet=True
    )
    assert resp.status_code == 201, resp.text
    files = client.pull(target=target, outdir=str(tmp_path / "out"))
    assert Path(files[0]).read_bytes() == blob.read_bytes()


# -- refusals against the real server ------------------------------------------------------------


def _token(private: Private, user: str | None, *scopes: str) -> str:
    auth = (user, USERS[user]) if user else None
    r = httpx.get(
        f"{private.server.url}/auth/token",
        params={"service": "berth", "scope": list(scopes)},
        auth=auth,
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()["token"]


def _raw(private: Private, method: str, path: str, headers: dict[str, str]) -> tuple[int, str]:
    """One request with the path exactly as given (httpx would resolve ``..``)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", private.server.port, timeout=10)
    try:
        conn.request(method, path, body=b"{}", headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_refusals_change_nothing(tmp_path: Path, private: Private, skopeo: Skopeo) -> None:
    import base64
    import time

    import jwt

    from berth.auth.keys import generate_private_key, load_signing_key, private_pem
    from berth.auth.scopes import Access
    from berth.auth.tokens import TokenIssuer

    src, _ = _image(tmp_path)
    repo = _repo("apps")
    skopeo.copy(
        f"oci:{src.path}:v1", f"docker://{private.host}/{repo}:v1", "--dest-creds", _creds("alice")
    )
    other_repo = _repo("apps")
    upload = ("POST", f"/v2/{repo}/blobs/uploads/")
    put = ("PUT", f"/v2/{repo}/manifests/v2")

    def basic(user: str, password: str) -> dict[str, str]:
        return {
            "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        }

    cases: list[tuple[str, tuple[str, str], dict[str, str], int]] = [
        ("no credentials", upload, {}, 401),
        ("catalog, no credentials", ("GET", "/v2/_catalog"), {}, 401),
    ]
    if private.mode == "htpasswd":
        cases += [
            ("wrong password", upload, basic("alice", "nope"), 401),
            ("pull-only user pushes", put, basic("puller", USERS["puller"]), 403),
            (
                "repo A user on B",
                ("POST", "/v2/secret/x/blobs/uploads/"),
                basic("alice", USERS["alice"]),
                403,
            ),
            (
                "name with ..",
                ("PUT", f"/v2/{repo}/../../secret/x/manifests/v1"),
                basic("alice", USERS["alice"]),
                403,
            ),
            (
                "catalog without the right",
                ("GET", "/v2/_catalog"),
                basic("alice", USERS["alice"]),
                403,
            ),
        ]
    else:
        key = load_signing_key(private.files.key)
        other_key = tmp_path / "other.pem"
        other_key.write_bytes(private_pem(generate_private_key("ec")))
        push_access = [Access("repository", repo, frozenset({"pull", "push"}))]
        expired = (
            TokenIssuer(key, "berth", "berth", 60)
            .issue("alice", push_access, time.time() - 3600)
            .token
        )
        foreign = (
            TokenIssuer(load_signing_key(other_key), "berth", "berth", 60)
            .issue("alice", push_access)
            .token
        )
        unsigned = jwt.encode(
            {
                "iss": "berth",
                "aud": "berth",
                "sub": "alice",
                "exp": int(time.time()) + 60,
                "access": [a.claim() for a in push_access],
            },
            None,
            algorithm="none",
        )
        for_a = _token(private, "alice", f"repository:{other_repo}:pull,push")
        pull_only = _token(private, "puller", f"repository:{repo}:pull,push")
        catalog_less = _token(private, "alice", "registry:catalog:*")
        assert "catalog" not in json.dumps(
            jwt.decode(catalog_less, options={"verify_signature": False})
        )
        r = httpx.get(f"{private.server.url}/auth/token", auth=("alice", "wrong"), timeout=10)
        assert r.status_code == 401
        cases += [
            ("expired token", upload, {"Authorization": f"Bearer {expired}"}, 401),
            ("token from another key", upload, {"Authorization": f"Bearer {foreign}"}, 401),
            ("alg none", upload, {"Authorization": f"Bearer {unsigned}"}, 401),
            ("token for A used on B", upload, {"Authorization": f"Bearer {for_a}"}, 403),
            ("pull-only token pushes", put, {"Authorization": f"Bearer {pull_only}"}, 403),
            (
                "name with ..",
                ("PUT", f"/v2/{repo}/../../secret/x/manifests/v1"),
                {"Authorization": f"Bearer {for_a}"},
                403,
            ),
            (
                "catalog without the right",
                ("GET", "/v2/_catalog"),
                {"Authorization": f"Bearer {catalog_less}"},
                403,
            ),
        ]
    before = _snapshot(private.server.root)
    for label, (method, path), headers, status in cases:
        got, body = _raw(private, method, path, {**headers, "Content-Type": "application/json"})
        assert got == status, (label, got, body)
        assert json.loads(body)["errors"][0]["code"] == (
            "UNAUTHORIZED" if status == 401 else "DENIED"
        ), label
    assert _snapshot(private.server.root) == before
