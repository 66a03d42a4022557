"""The pull-through cache with real servers and clients: a ``berth serve`` mirroring two real
upstreams, Distribution 2.8.2 with htpasswd (Basic) and Berth itself in token mode (Bearer),
both filled with skopeo; skopeo pulls through the mirror and the digests are the upstream's."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import upstreams
from berth.auth.htpasswd import set_user
from s3_servers import FaultProxy

from .conftest import BerthFactory, Containerd, Server, Skopeo, require_tool
from .ocilayout import MT_MANIFEST, OCILayout

pytestmark = pytest.mark.e2e

TOKEN_USER, TOKEN_PASSWORD = "filler", "token-upstream-pw"


@dataclass
class Mirror:
    server: Server
    dist: upstreams.Upstream
    token: Server


@pytest.fixture(scope="module")
def token_upstream(
    berth_factory: BerthFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Berth in token mode (its built-in token endpoint): a Bearer upstream."""
    base = tmp_path_factory.mktemp("token-upstream")
    htpasswd, key = base / "htpasswd", base / "token.pem"
    set_user(htpasswd, TOKEN_USER, TOKEN_PASSWORD, cost=4)
    subprocess.run([require_tool("berth"), "keygen", "--out", str(key)], check=True, timeout=60)
    server = berth_factory.start(
        args=["--auth", "token", "--htpasswd-file", str(htpasswd), "--token-key", str(key)]
    )
    yield server
    server.stop()


def _upstream(name: str, url: str, user: str, password: str, base: Path, **extra: object) -> dict:
    secret = base / f"{name}-password"
    secret.write_text(password + "\n")
    return {
        "name": name,
        "url": url,
        "namespace": f"{name}.example",
        "username": user,
        "password_file": str(secret),
        **extra,
    }


@pytest.fixture(scope="module")
def mirror(
    berth_factory: BerthFactory,
    distribution_upstream: upstreams.Upstream,
    token_upstream: Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Mirror]:
    base = tmp_path_factory.mktemp("mirror")
    config = {
        "proxy": {
            "upstreams": [
                # No namespace: the url's host, as containerd's ?ns= names the origin.
                {
                    **_upstream(
                        "dist", distribution_upstream.url, upstreams.USER, upstreams.PASSWORD, base
                    ),
                    "namespace": None,
                },
                _upstream("tok", token_upstream.url, TOKEN_USER, TOKEN_PASSWORD, base),
            ]
        }
    }
    server = berth_factory.start(config=config)
    yield Mirror(server, distribution_upstream, token_upstream)
    server.stop()


def _fill(skopeo: Skopeo, tmp_path: Path, ref: str, creds: str) -> str:
    """Push a fresh two-layer image with skopeo; returns its manifest digest."""
    src = OCILayout(tmp_path / f"src-{uuid.uuid4().hex[:6]}")
    image = src.add_image(layers=2)
    src.tag(image.descriptor, "v1")
    skopeo.copy(f"oci:{src.path}:v1", ref, "--dest-creds", creds, "--preserve-digests")
    return image.digest


@pytest.mark.parametrize("upstream", ["dist", "tok"])
def test_skopeo_pulls_through_the_mirror(
    tmp_path: Path, mirror: Mirror, skopeo: Skopeo, upstream: str
) -> None:
    repo = f"team/app-{uuid.uuid4().hex[:8]}"
    if upstream == "dist":
        origin, creds = mirror.dist.url, f"{upstreams.USER}:{upstreams.PASSWORD}"
    else:
        origin, creds = mirror.token.url, f"{TOKEN_USER}:{TOKEN_PASSWORD}"
    host = origin.removeprefix("http://")
    namespace = host if upstream == "dist" else "tok.example"
    digest = _fill(skopeo, tmp_path, f"docker://{host}/{repo}:v1", creds)

    out = tmp_path / "pulled"
    skopeo.copy(f"docker://{mirror.server.host}/{upstream}/{repo}:v1", f"oci:{out}:v1")
    assert OCILayout(out).resolve("v1")["digest"] == digest
    assert digest in OCILayout(out).verify()  # every blob's bytes match its digest
    raw = skopeo.inspect_raw(f"docker://{mirror.server.host}/{upstream}/{repo}:v1")
    upstream_raw = skopeo.inspect_raw(f"docker://{host}/{repo}:v1", "--creds", creds)
    assert raw == upstream_raw

    # containerd's mirror route (?ns=) reaches the same cache under the same name.
    with mirror.server.client() as c:
        r = c.get(
            f"/v2/{repo}/manifests/v1",
            params={"ns": namespace},
            headers={"Accept": MT_MANIFEST},
        )
        assert r.status_code == 200, r.text
        assert r.headers["Docker-Content-Digest"] == digest
        for layer in json.loads(r.content)["layers"]:
            r = c.get(f"/v2/{repo}/blobs/{layer['digest']}", params={"ns": namespace})
            assert r.status_code == 200
        r = c.get(f"/v2/{upstream}/{repo}/tags/list")
        assert r.json() == {"name": f"{upstream}/{repo}", "tags": ["v1"]}
        # Pushing into the proxied namespace is refused with a clear error.
        r = c.post(f"/v2/{upstream}/{repo}/blobs/uploads/")
        assert r.status_code == 405, r.text
        assert r.json()["errors"][0]["code"] == "UNSUPPORTED"


def test_stopped_upstream_serves_cached_tags_only(
    tmp_path: Path, berth_factory: BerthFactory, skopeo: Skopeo
) -> None:
    origin = upstreams.start_distribution()
    try:
        creds = f"{upstreams.USER}:{upstreams.PASSWORD}"
        host = origin.url.removeprefix("http://")
        cached = _fill(skopeo, tmp_path, f"docker://{host}/app/cached:v1", creds)
        _fill(skopeo, tmp_path, f"docker://{host}/app/uncached:v1", creds)
        # TTL 0: every pull revalidates, so the cached pull below really meets the outage.
        upstream = _upstream(
            "dist", origin.url, upstreams.USER, upstreams.PASSWORD, tmp_path, tag_ttl_seconds=0
        )
        server = berth_factory.start(config={"proxy": {"upstreams": [upstream]}})
        try:
            skopeo.copy(f"docker://{server.host}/dist/app/cached:v1", f"oci:{tmp_path / 'a'}:v1")
        finally:
            origin.stop()
        out = tmp_path / "b"
        skopeo.copy(f"docker://{server.host}/dist/app/cached:v1", f"oci:{out}:v1")
        assert OCILayout(out).resolve("v1")["digest"] == cached
        failed = skopeo.copy_fails(
            f"docker://{server.host}/dist/app/uncached:v1", f"oci:{tmp_path / 'c'}:v1"
        )
        assert "503" in failed or "unavailable" in failed.lower(), failed
        with httpx.Client(base_url=server.url, timeout=30) as c:
            r = c.get("/v2/dist/app/uncached/manifests/v1")
            assert r.status_code == 503
            assert r.json()["errors"][0]["code"] == "UNAVAILABLE"
            assert "upstream dist is unavailable" in r.json()["errors"][0]["message"]
            metrics = c.get("/metrics").text
            assert 'berth_proxy_stale_served_total{kind="manifest",upstream="dist"}' in metrics
        server.stop()
    finally:
        origin.stop()


def test_containerd_pulls_through_a_hosts_toml_mirror(
    tmp_path: Path, mirror: Mirror, skopeo: Skopeo, containerd: Containerd
) -> None:
    """containerd asks the mirror first, with ``?ns=<origin host>``: the ``dist`` upstream's
    namespace (its url's host), so the pull is served and cached under ``dist/<repo>``."""
    repo = f"team/ctr-{uuid.uuid4().hex[:8]}"
    origin = mirror.dist.url.removeprefix("http://")
    digest = _fill(skopeo, tmp_path, f"docker://{origin}/{repo}:v1", upstreams_creds())
    hosts = tmp_path / "hosts.d"
    (hosts / origin).mkdir(parents=True)
    (hosts / origin / "hosts.toml").write_text(
        f'server = "{mirror.dist.url}"\n\n'
        f'[host."{mirror.server.url}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    ref = f"{origin}/{repo}:v1"
    # No credentials for the origin: only the mirror can answer this pull.
    containerd.ctr("images", "pull", "--hosts-dir", str(hosts), "--platform", "linux/amd64", ref)
    try:
        listed = containerd.ctr("images", "ls").stdout
        assert ref in listed and digest in listed, listed
        containerd.ctr("images", "check", f"name=={ref}")
        revision = (
            mirror.server.root
            / "docker/registry/v2/repositories/dist"
            / repo
            / "_manifests/revisions/sha256"
            / digest.split(":")[1]
            / "link"
        )
        assert revision.read_text() == digest
    finally:
        containerd.ctr("images", "rm", "--sync", ref, check=False)


def upstreams_creds() -> str:
    return f"{upstreams.USER}:{upstreams.PASSWORD}"


def test_a_client_leaving_mid_fill_does_not_stop_it(
    tmp_path: Path, berth_factory: BerthFactory, distribution_upstream: upstreams.Upstream
) -> None:
    """The first client streams the fill live; when it goes away the fill goes on, and the
    next request is served the stored blob without another upstream fetch."""
    counting = FaultProxy(distribution_upstream.url)
    try:
        data = os.urandom(24 * 1024 * 1024)
        repo = f"team/big-{uuid.uuid4().hex[:8]}"
        with distribution_upstream.client() as up:
            digest = upstreams.push_blob(up, repo, data)
        upstream = _upstream(
            "dist", counting.endpoint, upstreams.USER, upstreams.PASSWORD, tmp_path
        )
        server = berth_factory.start(config={"proxy": {"upstreams": [upstream]}})
        try:
            with httpx.Client(base_url=server.url, timeout=60) as c:
                with c.stream("GET", f"/v2/dist/{repo}/blobs/{digest}") as r:
                    assert r.status_code == 200
                    assert r.headers["Content-Length"] == str(len(data))
                    first = next(r.iter_bytes())
                    assert data.startswith(first)
                # Left after the first chunk; the next request waits for (or finds) the blob.
                r = c.get(f"/v2/dist/{repo}/blobs/{digest}")
                assert r.status_code == 200 and r.content == data
            fetches = [t for m, t, _ in counting.seen if m == "GET" and digest in t]
            assert len(fetches) == 1, counting.seen
        finally:
            server.stop()
    finally:
        counting.stop()
