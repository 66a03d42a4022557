"""Fixtures for the end-to-end tests: real servers (berth, CNCF Distribution, containerd) and
real clients (skopeo, ctr, helm, oras), all on 127.0.0.1, all stopped by PID at teardown.

The registry under test is chosen by ``BERTH_E2E_TARGET``: ``berth`` (the default) or
``distribution`` (CNCF Distribution 2.8.2, the reference the tests were validated against).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = REPO_ROOT / "tools" / "bin"
VENV_BIN = Path(sys.executable).parent
TARGETS = ("berth", "distribution")
DISTRIBUTION_SECRET = "berth-e2e-shared-secret"  # same secret => instances share upload state
READY_TIMEOUT = 30.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


# -- tools ---------------------------------------------------------------------------------------


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def find_tool(name: str) -> str | None:
    search = os.pathsep.join([str(TOOLS_BIN), str(VENV_BIN), os.environ.get("PATH", "")])
    return shutil.which(name, path=search)


def require_tool(name: str) -> str:
    """Path of the executable ``name`` (PATH, tools/bin, the venv).

    Missing: the test is skipped with the reason, except under ``CI=true``, where a missing
    tool fails the test, so CI can never go green by not running what a test names.
    """
    path = find_tool(name)
    if path:
        return path
    reason = (
        f"required tool {name!r} not found on PATH, in {TOOLS_BIN} or in {VENV_BIN} "
        "(.ci/run installs it)"
    )
    if in_ci():
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        reason = f"{what} needs root"
        if in_ci():
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)


def run(
    cmd: list[str],
    *,
    timeout: float = 120,
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a client command; on failure the error shows the command and both streams."""
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}",
            pytrace=False,
        )
    return proc


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique_repo(request: pytest.FixtureRequest, prefix: str = "e2e") -> str:
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    return f"{prefix}/{base}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    """A repository name no other test (or xdist worker) uses."""
    return unique_repo(request)


# -- servers -------------------------------------------------------------------------------------


@dataclass
class Server:
    kind: str
    proc: subprocess.Popen[bytes]
    port: int
    root: Path
    log: Path
    extra: dict[str, object] = field(default_factory=dict)
    scheme: str = "http"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kw)  # type: ignore[arg-type]

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(line[:400] for line in lines[-n:])

    def stop(self) -> None:
        stop_pid(self.proc)


def stop_pid(proc: subprocess.Popen[bytes], grace: float = 10) -> None:
    """Stop one process we started, by its PID: SIGTERM, then SIGKILL after ``grace``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)


def wait_registry_ready(server: Server, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.kind} exited with {server.proc.returncode} before it was ready:\n"
                f"{server.log_tail()}"
            )
        try:
            r = httpx.get(f"{server.url}/v2/", timeout=2, verify=False)
            if r.status_code in (200, 401):  # 401: ready, with authentication on
                return
            last = f"GET /v2/ -> {r.status_code}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{server.kind} not ready in {timeout}s ({last}):\n{server.log_tail()}")


class RegistryFactory:
    """Starts registry processes of one kind on free ports; stops them all at teardown."""

    kind = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[Server] = []

    def new_root(self) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{self.kind}-root-", dir=self.workdir))

    def start(self, root: Path | None = None, config: dict | None = None) -> Server:
        """A new server on a free port, serving ``root`` (a new directory if None).

        ``config``: extra settings merged into the server's configuration file (berth only).
        """
        root = root or self.new_root()
        root.mkdir(parents=True, exist_ok=True)
        last: Exception | None = None
        for _ in range(3):  # a free port can be taken between bind() and the server's listen()
            port = free_port()
            server = self._spawn(port, root, config)
            self.servers.append(server)
            try:
                wait_registry_ready(server)
                return server
            except RuntimeError as exc:
                last = exc
                server.stop()
        raise RuntimeError(f"could not start {self.kind}: {last}")

    def _spawn(self, port: int, root: Path, config: dict | None) -> Server:
        raise NotImplementedError

    def stop_all(self) -> None:
        running = [s for s in self.servers if s.proc.poll() is None]
        for server in running:  # SIGTERM all first, so they shut down side by side
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.proc.pid, signal.SIGTERM)
        for server in running:
            server.stop()


# How long a replica may still answer from its link cache after a delete made elsewhere
# (cache.link_staleness_seconds, default), plus slack for a loaded machine.
LINK_STALENESS = 5.0


def within_staleness(check: Callable[[], bool], bound: float = LINK_STALENESS) -> float:
    """Poll ``check`` until it holds; fail if that takes longer than the bound (+1 s slack).
    Returns how long it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > bound + 1.0:
            raise AssertionError(f"not seen within the staleness bound ({bound} s)")
        time.sleep(0.1)
    return time.monotonic() - start


class BerthFactory(RegistryFactory):
    kind = "berth"
    _args: tuple[str, ...] = ()
    _scheme = "http"

    def start(
        self,
        root: Path | None = None,
        config: dict | None = None,
        args: list[str] | None = None,
        scheme: str = "http",
    ) -> Server:
        """As RegistryFactory.start; ``args``: extra ``berth serve`` flags (e.g. --auth),
        ``scheme``: https when the flags or config turn TLS on."""
        self._args, self._scheme = tuple(args or ()), scheme
        try:
            return super().start(root, config)
        finally:
            self._args, self._scheme = (), "http"

    def _spawn(self, port: int, root: Path, config: dict | None) -> Server:
        exe = require_tool("berth")
        log = self.workdir / f"berth-{port}.log"
        cmd = [exe, "serve", "--host", "127.0.0.1", "--port", str(port), *self._args]
        if config is None or "workers" not in config.get("http", {}):
            # One process per server unless a test asks for workers: tests stop, kill and
            # signal servers by PID (the default, one worker per CPU, is tested on its own).
            cmd += ["--workers", "1"]
        if config is None:
            cmd += ["--storage-root", str(root)]
        else:
            # Exercise `berth serve --config FILE` (JSON is YAML): the file names the root.
            settings = json.loads(json.dumps(config))
            settings.setdefault("storage", {}).setdefault("filesystem", {})["root"] = str(root)
            path = self.workdir / f"berth-{port}.yaml"
            path.write_text(json.dumps(settings, indent=2))
            cmd += ["--config", str(path)]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        return Server("berth", proc, port, root, log, scheme=self._scheme)


class DistributionFactory(RegistryFactory):
    kind = "distribution"

    def storage_driver(self, root: Path) -> dict[str, object]:
        """The ``storage`` driver section: a filesystem root (subclasses use S3)."""
        return {"filesystem": {"rootdirectory": str(root)}}

    def write_config(self, root: Path, port: int) -> Path:
        """Distribution 2.8.2's config.yml: the storage driver, deletes on, no purging."""
        config = self.workdir / f"distribution-{port}.yml"
        config.write_text(  # JSON is YAML
            json.dumps(
                {
                    "version": 0.1,
                    "log": {"level": "info", "accesslog": {"disabled": False}},
                    "storage": {
                        **self.storage_driver(root),
                        "delete": {"enabled": True},
                        "maintenance": {"uploadpurging": {"enabled": False}},
                    },
                    "http": {"addr": f"127.0.0.1:{port}", "secret": DISTRIBUTION_SECRET},
                },
                indent=2,
            )
        )
        return config

    def _spawn(self, port: int, root: Path, config: dict | None) -> Server:
        if config:
            raise ValueError("extra config is for berth only")
        exe = require_tool("docker-registry")
        config_path = self.write_config(root, port)
        log = self.workdir / f"distribution-{port}.log"
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [exe, "serve", str(config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        return Server("distribution", proc, port, root, log)


FACTORIES: dict[str, type[RegistryFactory]] = {
    "berth": BerthFactory,
    "distribution": DistributionFactory,
}


def target_kind() -> str:
    kind = os.environ.get("BERTH_E2E_TARGET", "berth").strip().lower()
    if kind not in TARGETS:
        raise pytest.UsageError(f"BERTH_E2E_TARGET must be one of {TARGETS}, not {kind!r}")
    return kind


def berth_bug(reason: str) -> pytest.MarkDecorator:
    """Marks a test that fails because of a known berth bug (listed in docs/testing.md).

    It is reported as xfail so the rest of CI stays meaningful; ``BERTH_E2E_STRICT=1`` runs it as
    an ordinary test. Remove the mark with the fix (an unexpected pass shows as XPASS).
    """
    return pytest.mark.xfail(
        condition=target_kind() == "berth" and not os.environ.get("BERTH_E2E_STRICT"),
        reason=f"berth bug: {reason}",
        strict=False,
    )


@pytest.fixture(scope="session")
def e2e_workdir() -> Iterator[Path]:
    """Server roots, configs and logs. ``BERTH_E2E_KEEP=1`` keeps it (its path is printed)."""
    # Short path under /tmp: unix socket paths (containerd) are limited to 108 bytes.
    path = Path(tempfile.mkdtemp(prefix="berth-e2e-"))
    yield path
    if os.environ.get("BERTH_E2E_KEEP"):
        print(f"\nberth e2e: kept {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """On a failure, attach the log tail of every server the test used."""
    report = yield
    if report.failed:
        seen: set[int] = set()
        for value in getattr(item, "funcargs", {}).values():
            values = value if isinstance(value, tuple | list) else (value,)
            for v in values:
                if isinstance(v, Server) and id(v) not in seen:
                    seen.add(id(v))
                    report.sections.append((f"{v.kind} {v.host} log", v.log_tail(40)))
    return report


@pytest.fixture(scope="session")
def berth_factory(e2e_workdir: Path) -> Iterator[BerthFactory]:
    factory = BerthFactory(e2e_workdir)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def distribution_factory(e2e_workdir: Path) -> Iterator[DistributionFactory]:
    factory = DistributionFactory(e2e_workdir)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def target_factory(
    request: pytest.FixtureRequest,
) -> RegistryFactory:
    """The factory of the registry under test (``BERTH_E2E_TARGET``)."""
    return request.getfixturevalue(f"{target_kind()}_factory")


@pytest.fixture(scope="session")
def registry(target_factory: RegistryFactory) -> Server:
    """One shared instance of the registry under test, with its own storage directory."""
    return target_factory.start()


@pytest.fixture(scope="session")
def distribution(distribution_factory: DistributionFactory) -> Server:
    return distribution_factory.start()


@pytest.fixture(scope="session")
def replica_pair(target_factory: RegistryFactory) -> tuple[Server, Server]:
    """Two processes of the registry under test serving ONE storage directory."""
    root = target_factory.new_root()
    return target_factory.start(root=root), target_factory.start(root=root)


@pytest.fixture(scope="session")
def shared_pair(
    target_factory: RegistryFactory, distribution_factory: DistributionFactory
) -> tuple[Server, Server]:
    """(registry under test, CNCF Distribution 2.8.2), both serving ONE storage directory."""
    root = distribution_factory.new_root()
    dist = distribution_factory.start(root=root)
    return target_factory.start(root=root), dist


# -- containerd ----------------------------------------------------------------------------------


@dataclass
class Containerd:
    proc: subprocess.Popen[bytes]
    socket: str
    root: Path
    log: Path
    ctr_path: str

    def ctr(self, *args: str, timeout: float = 120, check: bool = True):
        return run([self.ctr_path, "-a", self.socket, *args], timeout=timeout, check=check)


@pytest.fixture(scope="session")
def containerd(e2e_workdir: Path) -> Iterator[Containerd]:
    """A private containerd (own root, state, socket; CRI plugin off), once per session."""
    require_root("containerd")
    daemon = require_tool("containerd")
    ctr = require_tool("ctr")
    base = Path(tempfile.mkdtemp(prefix="ctrd-", dir=e2e_workdir))
    sock = str(base / "c.sock")
    config = base / "config.toml"
    config.write_text(
        f"""version = 2
root = "{base / "root"}"
state = "{base / "state"}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{base / "opt"}"
"""
    )
    log = base / "containerd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [daemon, "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    daemon_ = Containerd(proc, sock, base, log, ctr)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            tail = log.read_text(errors="replace")[-3000:]
            if proc.poll() is not None:
                raise RuntimeError(f"containerd exited: {tail}")
            if os.path.exists(sock) and daemon_.ctr("version", check=False).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd not ready: {tail}")
            time.sleep(0.1)
        yield daemon_
    finally:
        stop_pid(proc)
        # Leave no mounts behind (snapshots are unmounted when not in use; be thorough anyway).
        shutil.rmtree(base, ignore_errors=True)


# -- skopeo --------------------------------------------------------------------------------------


@dataclass
class Skopeo:
    path: str
    policy: Path
    authfile: Path

    def _base(self) -> list[str]:
        return [self.path, "--policy", str(self.policy)]

    def copy(self, src: str, dst: str, *flags: str) -> subprocess.CompletedProcess[str]:
        tls: list[str] = []
        if src.startswith("docker://"):
            tls.append("--src-tls-verify=false")
        if dst.startswith("docker://"):
            tls.append("--dest-tls-verify=false")
        return run(
            [*self._base(), "copy", "--authfile", str(self.authfile), *tls, *flags, src, dst],
            timeout=180,
        )

    def copy_fails(self, src: str, dst: str) -> str:
        """A copy that must fail: its stderr."""
        tls = ["--src-tls-verify=false"] if src.startswith("docker://") else []
        proc = subprocess.run(
            [*self._base(), "copy", "--authfile", str(self.authfile), *tls, src, dst],
            capture_output=True,
            text=True,
            timeout=180,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode != 0, f"skopeo copy {src} {dst} succeeded"
        return proc.stderr

    def inspect_raw(self, ref: str, *flags: str) -> bytes:
        tls = ["--tls-verify=false"] if ref.startswith("docker://") else []
        proc = subprocess.run(
            [
                *self._base(),
                "inspect",
                "--raw",
                "--authfile",
                str(self.authfile),
                *tls,
                *flags,
                ref,
            ],
            capture_output=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            pytest.fail(
                f"skopeo inspect --raw {ref} failed: {proc.stderr.decode(errors='replace')}",
                pytrace=False,
            )
        return proc.stdout


@pytest.fixture(scope="session")
def skopeo(e2e_workdir: Path) -> Skopeo:
    exe = require_tool("skopeo")
    policy = e2e_workdir / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    authfile = e2e_workdir / "auth.json"
    authfile.write_text(json.dumps({"auths": {}}))
    return Skopeo(exe, policy, authfile)


# -- raw registry HTTP ---------------------------------------------------------------------------


def with_query(location: str, **params: str) -> str:
    """``location`` (absolute or a path, maybe with a query) plus ``params``, query kept."""
    url = httpx.URL(location)
    return str(url.copy_merge_params(params))


def location_path(location: str) -> str:
    """Path and query of a Location header, so it can be sent to another replica."""
    url = httpx.URL(location)
    return url.raw_path.decode()


def push_blob(c: httpx.Client, repo: str, data: bytes) -> str:
    """POST an upload session, then PUT the whole blob with ``?digest=``; returns the digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = c.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, (r.status_code, r.text)
    r = c.put(
        with_query(r.headers["Location"], digest=digest),
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201, (r.status_code, r.text)
    assert r.headers["Docker-Content-Digest"] == digest
    return digest
