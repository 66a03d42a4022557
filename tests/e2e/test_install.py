"""Berth installed the way the image installs it, and nothing more.

The Dockerfile copies a few paths into a build directory and runs ``pip install '.[operator]'``
in a fresh venv: no dev extras, no editable install. A module that imports a dev-only package
(pytest, httpx, ...) works in the development venv and crashes in the image, so here a fresh
venv gets exactly that install (the build directory made from the Dockerfile's own ``COPY``
lines), imports every module of ``berth`` and ``berth_operator``, and runs ``berth serve`` in
each auth mode over TCP. A second venv gets ``berth`` without the ``operator`` extra:
``berth-operator`` must then say which extra to install instead of printing a traceback.

Both venvs are built once per test run (concurrently; under xdist the first worker builds them
and the others wait on a lock), from the package index pip is configured with.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from berth.auth.keys import generate_private_key, load_signing_key, private_pem
from berth.auth.tokens import TokenIssuer

from .conftest import REPO_ROOT, Server, free_port, in_ci, stop_pid, wait_registry_ready

# Building the two venvs takes most of a minute (the index is remote); the first test waits.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

INSTALL_TIMEOUT = 240.0
USER, PASSWORD = "installer", "installer-Pw-5e1f"
# Dev-only distributions that must not be needed (nor, today, be present) at run time.
DEV_ONLY_IMPORTS = ("httpx", "pytest", "hypothesis", "moto", "oras", "kmock")


# -- the build context, as the Dockerfile makes it ------------------------------------------------


def dockerfile_build_stage() -> tuple[list[tuple[list[str], str]], list[str]]:
    """The ``COPY`` (sources, destination) pairs and the ``RUN`` commands of the first stage."""
    text = (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    copies: list[tuple[list[str], str]] = []
    runs: list[str] = []
    stages = 0
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            stages += 1
            if stages > 1:
                break
        elif word == "COPY" and not rest.startswith("--from"):
            *sources, dest = shlex.split(rest)
            copies.append((sources, dest))
        elif word == "RUN":
            runs.append(rest)
    return copies, runs


def make_build_context(dest: Path) -> None:
    """What ``docker build`` would see in the build stage's WORKDIR (``.dockerignore``'d
    caches and egg-info left out)."""
    copies, _ = dockerfile_build_stage()
    assert copies, "the Dockerfile's build stage copies nothing"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".mypy_cache")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for sources, target in copies:
        for source in sources:
            src = REPO_ROOT / source
            where = dest / target / src.name if target.endswith(("/", ".")) else dest / target
            if src.is_dir():
                shutil.copytree(src, where, ignore=ignore)
            else:
                where.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, where)


def test_dockerfile_installs_the_operator_extra_without_dev_extras() -> None:
    _, runs = dockerfile_build_stage()
    installs = [r for r in " && ".join(runs).split("&&") if " install " in r and "pip" in r]
    targets = [i for i in installs if "--upgrade pip" not in i]
    assert len(targets) == 1, installs
    (install,) = targets
    assert "'.[operator]'" in install, install
    assert "dev" not in install and " -e " not in install, "the image never gets dev extras"


# -- the venvs ------------------------------------------------------------------------------------


@dataclass
class Venv:
    path: Path
    extra: str

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"


def clean_env(venv: Venv | None = None, **extra: str) -> dict[str, str]:
    """No BERTH_* settings, PYTHONPATH or dev venv leaking into the installed processes."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BERTH_") and k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    if venv is not None:
        env["PATH"] = os.pathsep.join([str(venv.bin), env.get("PATH", "")])
        env["VIRTUAL_ENV"] = str(venv.path)
    env.update(extra)
    return env


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def _build(base: Path) -> dict[str, Venv]:
    """Both venvs, their installs running concurrently."""
    venvs = {
        "operator": Venv(base / "venv-operator", "[operator]"),
        "bare": Venv(base / "bare", ""),
    }
    for venv in venvs.values():
        made = subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(venv.path)],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=120,
        )
        if made.returncode != 0 or not (venv.bin / "pip").exists():
            _unavailable(f"python -m venv cannot make a venv with pip here: {made.stderr[-800:]}")
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    failures = []
    try:
        for name, venv in venvs.items():
            context = base / f"context-{name}"
            make_build_context(context)
            log = base / f"pip-{name}.log"
            # As the Dockerfile: a non-editable install of the build directory.
            pip = [str(venv.bin / "pip"), "install", "--no-input", "--no-compile", f".{venv.extra}"]
            with log.open("wb") as out:
                procs[name] = (
                    subprocess.Popen(
                        pip,
                        cwd=context,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=clean_env(venv),
                    ),
                    log,
                )
        deadline = time.monotonic() + INSTALL_TIMEOUT
        for name, (proc, log) in procs.items():
            try:
                code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                code = -1
            if code != 0:
                tail = log.read_text(errors="replace")[-3000:]
                failures.append(f"pip install '.{venvs[name].extra}' exited {code}:\n{tail}")
    finally:
        for proc, _ in procs.values():
            stop_pid(proc)  # only what is still running (a timeout, an error above)
    if failures:
        raise RuntimeError("\n\n".join(failures))
    # As the Dockerfile again (`python -m compileall -q /opt/berth/lib`), so that every
    # `berth serve` below starts from bytecode, not from source.
    image = venvs["operator"]
    compiled = subprocess.run(
        [str(image.python), "-m", "compileall", "-q", "-j", "0", str(image.path / "lib")],
        capture_output=True,
        text=True,
        env=clean_env(image),
        timeout=INSTALL_TIMEOUT,
    )
    if compiled.returncode != 0:
        raise RuntimeError(
            f"compileall failed:\n{compiled.stdout[-3000:]}{compiled.stderr[-2000:]}"
        )
    return venvs


@pytest.fixture(scope="module")
def venvs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Venv]:
    """Built once per test run: under xdist every worker has its own base temp directory under
    one shared parent, so the first worker to take the lock builds and the others reuse."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / "berth-install"
    root.mkdir(exist_ok=True)
    done, failed = root / "done.json", root / "failed.txt"
    with (root / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if failed.exists():
                pytest.fail(failed.read_text(), pytrace=False)
            if not done.exists():
                started = time.monotonic()
                try:
                    built = _build(root)
                except Exception as exc:  # the other workers report it rather than retry
                    failed.write_text(f"{type(exc).__name__}: {exc}")
                    raise
                done.write_text(
                    json.dumps(
                        {
                            "seconds": round(time.monotonic() - started, 1),
                            "venvs": {k: [str(v.path), v.extra] for k, v in built.items()},
                        }
                    )
                )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    record = json.loads(done.read_text())
    return {k: Venv(Path(path), extra) for k, (path, extra) in record["venvs"].items()}


@pytest.fixture(scope="module")
def image_venv(venvs: dict[str, Venv]) -> Venv:
    return venvs["operator"]


@pytest.fixture(scope="module")
def bare_venv(venvs: dict[str, Venv]) -> Venv:
    return venvs["bare"]


def run_in(
    venv: Venv, args: list[str], cwd: Path, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env(venv),
        timeout=timeout,
    )


# -- every module imports -------------------------------------------------------------------------

WALK = textwrap.dedent(
    """
    import importlib, importlib.util, json, pkgutil, sys

    report = {"imported": [], "failed": {}, "files": {}, "present": []}
    def failed(name):
        report["failed"][name] = repr(sys.exc_info()[1])
    for top in ("berth", "berth_operator"):
        package = importlib.import_module(top)
        report["files"][top] = package.__file__
        report["imported"].append(top)
        for info in pkgutil.walk_packages(package.__path__, top + ".", onerror=failed):
            try:
                importlib.import_module(info.name)
                report["imported"].append(info.name)
            except Exception:
                failed(info.name)
    report["present"] = [n for n in sys.argv[1:] if importlib.util.find_spec(n) is not None]
    print(json.dumps(report))
    """
)


def test_every_module_imports_with_runtime_dependencies_only(
    image_venv: Venv, tmp_path: Path
) -> None:
    proc = run_in(image_venv, [str(image_venv.python), "-c", WALK, *DEV_ONLY_IMPORTS], tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["failed"] == {}, json.dumps(report["failed"], indent=2)
    # The installed copy, not the working tree.
    site = str(image_venv.path)
    assert all(f.startswith(site) for f in report["files"].values()), report["files"]
    assert Path(sys.prefix).resolve() != image_venv.path.resolve()
    editable = list(image_venv.path.glob("lib/*/site-packages/__editable__*"))
    assert not editable, f"an editable install: {editable}"
    imported = set(report["imported"])
    # Every module of the source tree was found in the installed package.
    for top, src in (("berth", "service/berth"), ("berth_operator", "operator/berth_operator")):
        for path in (REPO_ROOT / src).rglob("*.py"):
            rel = path.relative_to(REPO_ROOT / src).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            assert ".".join([top, *parts]) in imported, f"{path} is not in the installed package"
    # What makes this test meaningful: the dev-only packages are really absent.
    assert report["present"] == [], (
        f"{report['present']} are installed by the runtime dependencies now; this test no "
        "longer proves that berth runs without them"
    )
    # The CRDs ship as package data (the operator reads them at run time).
    crds = list((Path(report["files"]["berth_operator"]).parent / "crds").glob("*.yaml"))
    assert crds, "berth_operator/crds/*.yaml is not in the installed package"


# -- berth serve in each auth mode ----------------------------------------------------------------


@dataclass
class AuthFiles:
    htpasswd: Path
    key: Path


@pytest.fixture(scope="module")
def auth_files(image_venv: Venv, tmp_path_factory: pytest.TempPathFactory) -> AuthFiles:
    """Made by the installed ``berth`` itself: ``berth user add`` (bcrypt) and ``berth keygen``."""
    base = tmp_path_factory.mktemp("install-auth")
    htpasswd, key = base / "htpasswd", base / "token.pem"
    berth = str(image_venv.bin / "berth")
    add = [berth, "user", "add", USER, "--htpasswd-file", str(htpasswd), "--password-stdin"]
    added = run_in(
        image_venv,
        [*add, "--cost", "5"],
        base,
        stdin=PASSWORD + "\n",
    )
    assert added.returncode == 0, added.stderr
    made = run_in(image_venv, [berth, "keygen", "--out", str(key)], base)
    assert made.returncode == 0, made.stderr
    return AuthFiles(htpasswd, key)


@contextlib.contextmanager
def serving(
    venv: Venv, tmp_path: Path, args: list[str], env: dict[str, str] | None = None
) -> Iterator[Server]:
    port = free_port()
    root, log = tmp_path / "data", tmp_path / "serve.log"
    cmd = [str(venv.bin / "berth"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--storage-root", str(root), *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=clean_env(venv, **(env or {})),
        )
    server = Server("berth", proc, port, root, log)
    try:
        wait_registry_ready(server)
        yield server
    finally:
        stop_pid(proc)
    assert "Traceback" not in log.read_text(errors="replace"), server.log_tail()


def basic_auth() -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}


def test_serve_without_auth(image_venv: Venv, tmp_path: Path) -> None:
    with serving(image_venv, tmp_path, []) as server, server.client() as c:
        r = c.get("/v2/")
        assert r.status_code == 200, server.log_tail()
        assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_serve_htpasswd(image_venv: Venv, auth_files: AuthFiles, tmp_path: Path) -> None:
    args = ["--auth", "htpasswd", "--htpasswd-file", str(auth_files.htpasswd)]
    with serving(image_venv, tmp_path, args) as server, server.client() as c:
        r = c.get("/v2/")
        assert r.status_code == 401, server.log_tail()
        assert r.headers["WWW-Authenticate"] == 'Basic realm="berth"'
        assert c.get("/v2/", headers=basic_auth()).status_code == 200, server.log_tail()


def test_serve_token_with_the_built_in_endpoint(
    image_venv: Venv, auth_files: AuthFiles, tmp_path: Path
) -> None:
    args = ["--auth", "token", "--token-key", str(auth_files.key)]
    args += ["--htpasswd-file", str(auth_files.htpasswd)]
    with serving(image_venv, tmp_path, args) as server, server.client() as c:
        r = c.get("/v2/")
        assert r.status_code == 401, server.log_tail()
        assert r.headers["WWW-Authenticate"] == (
            f'Bearer realm="{server.url}/auth/token",service="berth"'
        )
        r = c.get("/auth/token", params={"service": "berth"}, headers=basic_auth())
        assert r.status_code == 200, server.log_tail()
        token = r.json()["token"]
        r = c.get("/v2/", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, server.log_tail()


@contextlib.contextmanager
def jwks_endpoint(document: dict[str, object]) -> Iterator[tuple[str, list[str]]]:
    """A JWKS on 127.0.0.1 (a thread of this process); yields its URL and the paths asked for."""
    body = json.dumps(document).encode()
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/jwks.json", hits
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_serve_token_from_an_external_issuer_jwks_url(image_venv: Venv, tmp_path: Path) -> None:
    """The JWKS is fetched by the installed package's own HTTP client (no dev dependency)."""
    key_file = tmp_path / "idp.pem"
    key_file.write_bytes(private_pem(generate_private_key("ec")))
    idp = load_signing_key(key_file)
    realm = "https://idp.example/token"
    with jwks_endpoint(idp.jwks()) as (url, hits):
        env = {
            "BERTH_AUTH__MODE": "token",
            "BERTH_AUTH__TOKEN__JWKS_URL": url,
            "BERTH_AUTH__TOKEN__REALM": realm,
            "BERTH_AUTH__TOKEN__ISSUER": "idp",
        }
        with serving(image_venv, tmp_path, [], env) as server, server.client() as c:
            r = c.get("/v2/")
            assert r.status_code == 401, server.log_tail()
            assert r.headers["WWW-Authenticate"] == f'Bearer realm="{realm}",service="berth"'
            token = TokenIssuer(idp, "idp", "berth", 300).issue("robot", []).token
            r = c.get("/v2/", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, server.log_tail()
            assert hits == ["/jwks.json"]


# -- without the operator extra -------------------------------------------------------------------


def test_operator_without_its_extra_names_the_extra(bare_venv: Venv, tmp_path: Path) -> None:
    script = bare_venv.bin / "berth-operator"
    assert script.exists(), "the console script is installed even without the extra"
    proc = run_in(bare_venv, [str(script)], tmp_path)
    assert proc.returncode != 0
    assert "pip install 'berth[operator]'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    # The registry itself needs no extra.
    version = run_in(bare_venv, [str(bare_venv.bin / "berth"), "--version"], tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("berth "), version.stderr


def test_operator_help_works_with_its_extra(image_venv: Venv, tmp_path: Path) -> None:
    proc = run_in(image_venv, [str(image_venv.bin / "berth-operator"), "--help"], tmp_path)
    assert proc.returncode == 0 and "--namespace" in proc.stdout, proc.stderr
