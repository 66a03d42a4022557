"""The pull-through cache against a real upstream (Distribution 2.8.2 with htpasswd auth),
on every storage driver: fills, shared routes, single-flight, verification, outages.

Berth talks to the upstream through a fault proxy (tests/s3_servers.py), which counts the
upstream's requests and can corrupt, refuse or delay them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import upstreams
from berth.auth.htpasswd import set_user
from berth.config import AuthSettings, PolicyRuleSettings, Settings
from berth.gc.evict import EvictionPolicy
from berth.registry.digest import Digest
from berth.storage import paths
from berth.storage.driver import PathNotFound, StorageDriver
from s3_servers import FaultProxy

from .conftest import Backend, push_blob
from .gc_fixtures import gc

MiB = 1024 * 1024


@pytest.fixture
def counting(distribution_upstream: upstreams.Upstream) -> Iterator[FaultProxy]:
    """A proxy in front of the upstream, recording (and on demand altering) its requests."""
    p = FaultProxy(distribution_upstream.url)
    yield p
    p.stop()


def proxy_settings(
    backend: Backend, upstream_url: str, tmp_path: Path, redirect: bool = False, **extra: Any
) -> Settings:
    password = tmp_path / "upstream-password"
    password.write_text(upstreams.PASSWORD + "\n")
    base = backend.settings(redirect=redirect).model_dump(mode="json")
    base["proxy"] = {
        "upstreams": [
            {
                "name": "up",
                "url": upstream_url,
                "namespace": "upstream.test",
                "username": upstreams.USER,
                "password_file": str(password),
                "read_timeout_seconds": 5,
                **extra,
            }
        ]
    }
    return Settings.model_validate(base)


@dataclass
class ProxyEnv:
    """A storage backend, the real upstream, and the counting proxy Berth reaches it through."""

    backend: Backend
    upstream: upstreams.Upstream
    counting: FaultProxy
    tmp_path: Path

    def settings(self, redirect: bool = False, **extra: Any) -> Settings:
        return proxy_settings(
            self.backend, self.counting.endpoint, self.tmp_path, redirect, **extra
        )

    def push_image(
        self, repo: str, tag: str, layers: list[bytes], seed: str = ""
    ) -> tuple[str, bytes]:
        with self.upstream.client() as up:
            return upstreams.push_image(up, repo, tag, layers, seed)

    def push_blob(self, repo: str, data: bytes) -> str:
        with self.upstream.client() as up:
            return upstreams.push_blob(up, repo, data)


@pytest.fixture
def env(
    backend: Backend,
    distribution_upstream: upstreams.Upstream,
    counting: FaultProxy,
    tmp_path: Path,
) -> ProxyEnv:
    return ProxyEnv(backend, distribution_upstream, counting, tmp_path)


@pytest.fixture
async def mirror(env: ProxyEnv) -> AsyncIterator[httpx.AsyncClient]:
    async with env.backend.client(env.settings()) as c:
        yield c


def _repo() -> str:
    return f"lib/img-{uuid.uuid4().hex[:8]}"


def _upstream_requests(p: FaultProxy, method: str, fragment: str) -> int:
    return sum(1 for m, target, _ in p.seen if m == method and fragment in target)


async def _stored(storage: StorageDriver, digest: str) -> bool:
    try:
        await storage.stat(paths.blob_data(Digest.parse(digest)))
    except PathNotFound:
        return False
    return True


async def test_pull_through_fills_once_and_serves_both_routes(
    mirror: httpx.AsyncClient,
    env: ProxyEnv,
    storage: StorageDriver,
) -> None:
    repo = _repo()
    layers = [os.urandom(3 * MiB + 17), b"small layer"]
    digest, manifest = env.push_image(repo, "v1", layers)
    body = json.loads(manifest)

    r = await mirror.get(f"/v2/up/{repo}/manifests/v1", headers={"Accept": upstreams.OCI_MANIFEST})
    assert r.status_code == 200, r.text
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.content == manifest
    for desc in [body["config"], *body["layers"]]:
        r = await mirror.get(f"/v2/up/{repo}/blobs/{desc['digest']}")
        assert r.status_code == 200, r.text
        assert "sha256:" + hashlib.sha256(r.content).hexdigest() == desc["digest"]
        assert await _stored(storage, desc["digest"])  # committed to this driver's storage
    # Stored under the prefixed name, like any pushed repository.
    await storage.stat(paths.revision_link(f"up/{repo}", Digest.parse(digest)))

    fetched = len(env.counting.seen)
    # The mirror route (containerd's ?ns=) shares the cache: nothing is fetched again.
    r = await mirror.get(f"/v2/{repo}/manifests/v1", params={"ns": "upstream.test"})
    assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == digest
    for desc in body["layers"]:
        r = await mirror.get(f"/v2/{repo}/blobs/{desc['digest']}", params={"ns": "upstream.test"})
        assert r.status_code == 200
        assert "sha256:" + hashlib.sha256(r.content).hexdigest() == desc["digest"]
    r = await mirror.get(f"/v2/up/{repo}/manifests/{digest}")
    assert r.status_code == 200 and r.content == manifest
    assert len(env.counting.seen) == fetched, env.counting.seen[fetched:]

    # Tags come from the upstream; an unknown namespace and a push are refused clearly.
    r = await mirror.get(f"/v2/up/{repo}/tags/list")
    assert r.status_code == 200 and r.json()["tags"] == ["v1"]
    r = await mirror.get(f"/v2/{repo}/manifests/v1", params={"ns": "quay.io"})
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "NAME_UNKNOWN"
    r = await mirror.put(
        f"/v2/up/{repo}/manifests/v2", content=manifest, headers={"Content-Type": body["mediaType"]}
    )
    assert r.status_code == 405 and r.json()["errors"][0]["code"] == "UNSUPPORTED"
    r = await mirror.post(f"/v2/up/{repo}/blobs/uploads/")
    assert r.status_code == 405 and "pull-through" in r.json()["errors"][0]["message"]
    r = await mirror.post("/v2/local/app/blobs/uploads/")  # other repositories work as usual
    assert r.status_code == 202


async def test_concurrent_pulls_of_an_uncached_blob_fetch_it_once(
    mirror: httpx.AsyncClient,
    env: ProxyEnv,
    storage: StorageDriver,
) -> None:
    repo = _repo()
    big = os.urandom(64 * MiB)
    digest = env.push_blob(repo, big)

    async def pull() -> str:
        h = hashlib.sha256()
        async with mirror.stream("GET", f"/v2/up/{repo}/blobs/{digest}") as r:
            assert r.status_code == 200, await r.aread()
            assert r.headers["Content-Length"] == str(len(big))
            async for chunk in r.aiter_bytes():
                h.update(chunk)
        return "sha256:" + h.hexdigest()

    results = await asyncio.gather(*(pull() for _ in range(20)))
    assert results == [digest] * 20
    assert _upstream_requests(env.counting, "GET", f"/blobs/{digest}") == 1
    assert await _stored(storage, digest)


async def test_stored_blobs_are_served_like_any_other_with_redirects(
    env: ProxyEnv, storage: StorageDriver
) -> None:
    repo = _repo()
    data = os.urandom(MiB + 1)
    digest = env.push_blob(repo, data)
    async with env.backend.client(env.settings(redirect=True)) as mirror:
        r = await mirror.get(f"/v2/up/{repo}/blobs/{digest}")  # the fill, streamed
        assert r.status_code == 200 and r.content == data
        r = await mirror.get(f"/v2/up/{repo}/blobs/{digest}")
        if env.backend.s3 is None:  # the filesystem driver has no URLs to redirect to
            assert r.status_code == 200 and r.content == data
        else:
            assert r.status_code == 307, r.text
            async with httpx.AsyncClient() as direct:
                assert (await direct.get(r.headers["Location"])).content == data
    assert _upstream_requests(env.counting, "GET", f"/blobs/{digest}") == 1


async def test_corrupted_upstream_blob_is_never_stored(
    mirror: httpx.AsyncClient,
    env: ProxyEnv,
    storage: StorageDriver,
) -> None:
    repo = _repo()
    data = os.urandom(2 * MiB + 5)
    digest = env.push_blob(repo, data)
    env.counting.rule = lambda method, target: (
        "corrupt" if method == "GET" and f"/blobs/{digest}" in target else None
    )
    received = b""
    with pytest.raises(Exception):  # noqa: B017  (the body ends short: no complete answer)
        async with mirror.stream("GET", f"/v2/up/{repo}/blobs/{digest}") as r:
            async for chunk in r.aiter_bytes():
                received += chunk
    assert len(received) < len(data)  # the unverified last chunk was held back
    assert not await _stored(storage, digest)
    with pytest.raises(PathNotFound):
        await storage.stat(paths.layer_link(f"up/{repo}", Digest.parse(digest)))
    # A HEAD now asks the upstream again (nothing was stored), and a good fetch stores it.
    env.counting.clear()
    r = await mirror.get(f"/v2/up/{repo}/blobs/{digest}")
    assert r.status_code == 200 and r.content == data
    assert await _stored(storage, digest)


async def test_upstream_outages_serve_cached_tags_and_fail_uncached_clearly(env: ProxyEnv) -> None:
    repo = _repo()
    digest, _ = env.push_image(repo, "v1", [b"layer one"])
    env.push_image(repo, "never-pulled", [b"layer two"], seed="2")
    settings = env.settings(tag_ttl_seconds=0)
    async with env.backend.client(settings) as mirror:
        r = await mirror.get(f"/v2/up/{repo}/manifests/v1")
        assert r.status_code == 200
        for action, status in (("reset", 503), (("status", 429, b""), 503), (("delay", 8), 504)):
            env.counting.rule = lambda method, target, action=action: action
            # Stale (TTL 0) but cached: served; never cached: the documented error.
            r = await mirror.get(f"/v2/up/{repo}/manifests/v1")
            assert r.status_code == 200, (action, r.text)
            assert r.headers["Docker-Content-Digest"] == digest
            r = await mirror.get(f"/v2/up/{repo}/manifests/never-pulled")
            assert r.status_code == status, (action, r.text)
            assert r.json()["errors"][0]["code"] == "UNAVAILABLE"
            assert "up" in r.json()["errors"][0]["message"]
            if status == 503:
                assert "Retry-After" in r.headers
        env.counting.clear()
        metrics = (await mirror.get("/metrics")).text
        assert 'berth_proxy_stale_served_total{kind="manifest",upstream="up"}' in metrics


async def test_tag_revalidation_asks_head_and_gets_only_changes(env: ProxyEnv) -> None:
    repo = _repo()
    first, _ = env.push_image(repo, "v1", [b"a"])
    settings = env.settings(tag_ttl_seconds=0)
    async with env.backend.client(settings) as mirror:
        r = await mirror.get(f"/v2/up/{repo}/manifests/v1")
        assert r.headers["Docker-Content-Digest"] == first
        env.counting.seen.clear()
        r = await mirror.get(f"/v2/up/{repo}/manifests/v1")  # unchanged: HEAD only
        assert r.headers["Docker-Content-Digest"] == first
        assert _upstream_requests(env.counting, "HEAD", "/manifests/v1") == 1
        assert _upstream_requests(env.counting, "GET", "/manifests/v1") == 0
        second, _ = env.push_image(repo, "v1", [b"b"], seed="moved")
        r = await mirror.get(f"/v2/up/{repo}/manifests/v1")  # moved: fetched and stored
        assert r.headers["Docker-Content-Digest"] == second
        assert _upstream_requests(env.counting, "GET", "/manifests/v1") == 1
    # With a long TTL the stored tag is served without asking.
    settings = env.settings(tag_ttl_seconds=3600)
    async with env.backend.client(settings) as mirror:
        env.counting.seen.clear()
        r = await mirror.get(f"/v2/up/{repo}/manifests/v1")
        assert r.headers["Docker-Content-Digest"] == second
        assert env.counting.seen == []


async def test_blob_head_asks_upstream_and_falls_back_to_get(
    mirror: httpx.AsyncClient,
    env: ProxyEnv,
    storage: StorageDriver,
) -> None:
    repo = _repo()
    data = os.urandom(100_000)
    digest = env.push_blob(repo, data)
    r = await mirror.head(f"/v2/up/{repo}/blobs/{digest}")
    assert r.status_code == 200 and r.headers["Content-Length"] == str(len(data))
    assert not await _stored(storage, digest)  # a HEAD the upstream answers fetches nothing
    # A chained cache answers 404 to HEAD until someone GETs (Distribution issue 4747).
    env.counting.rule = lambda method, target: ("status", 404, b"") if method == "HEAD" else None
    r = await mirror.head(f"/v2/up/{repo}/blobs/{digest}")
    assert r.status_code == 200 and r.headers["Content-Length"] == str(len(data))
    assert _upstream_requests(env.counting, "GET", f"/blobs/{digest}") == 1
    for _ in range(100):  # the fill the HEAD started finishes in the background
        if await _stored(storage, digest):
            break
        await asyncio.sleep(0.05)
    assert await _stored(storage, digest)
    missing = "sha256:" + "0" * 64
    r = await mirror.head(f"/v2/up/{repo}/blobs/{missing}")
    assert r.status_code == 404


async def test_allow_list_and_anonymous_fill(env: ProxyEnv) -> None:
    repo = _repo()
    env.push_image(repo, "v1", [b"x"])
    settings = env.settings(repositories=["other/*"], anonymous_fill=False)
    async with env.backend.client(settings) as mirror:
        r = await mirror.get(f"/v2/up/{repo}/manifests/v1")
        assert r.status_code == 404 and r.json()["errors"][0]["code"] == "NAME_UNKNOWN"
    settings = env.settings(anonymous_fill=False)
    async with env.backend.client(settings) as mirror:
        r = await mirror.get(f"/v2/up/{repo}/manifests/v1")
        assert r.status_code == 403 and r.json()["errors"][0]["code"] == "DENIED"
    assert env.counting.seen == []


async def test_access_policies_apply_to_the_prefixed_name(env: ProxyEnv) -> None:
    repo = _repo()
    digest, _ = env.push_image(repo, "v1", [b"policy"])
    htpasswd = env.tmp_path / "htpasswd"
    set_user(htpasswd, "mirrored", "pw-1", cost=4)
    set_user(htpasswd, "unprefixed", "pw-2", cost=4)
    settings = env.settings().model_copy(
        update={
            "auth": AuthSettings(
                mode="htpasswd",
                htpasswd_file=htpasswd,
                rules=[
                    PolicyRuleSettings(repositories=["up/**"], users=["mirrored"]),
                    PolicyRuleSettings(repositories=["lib/**"], users=["unprefixed"]),
                ],
            )
        }
    )
    async with env.backend.client(settings) as mirror:
        ns = {"ns": "upstream.test"}
        r = await mirror.get(f"/v2/{repo}/manifests/v1", params=ns)
        assert r.status_code == 401
        r = await mirror.get(f"/v2/{repo}/manifests/v1", params=ns, auth=("unprefixed", "pw-2"))
        assert r.status_code == 403  # the request is for up/<repo>, not <repo>
        assert env.counting.seen == []  # refused before anything reached the upstream
        r = await mirror.get(f"/v2/{repo}/manifests/v1", params=ns, auth=("mirrored", "pw-1"))
        assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == digest
        # Distribution 2.8.2 has no referrers API: what is stored answers (nothing here).
        r = await mirror.get(f"/v2/up/{repo}/referrers/{digest}", auth=("mirrored", "pw-1"))
        assert r.status_code == 200 and r.json()["manifests"] == []


async def test_replicas_wait_on_a_claim_instead_of_fetching_again(
    env: ProxyEnv,
    storage: StorageDriver,
) -> None:
    repo = _repo()
    data = os.urandom(8 * MiB + 3)
    digest = env.push_blob(repo, data)
    # The upstream is slow to start answering, so the second replica surely meets the claim.
    env.counting.rule = lambda method, target: ("delay", 0.5) if method == "GET" else None
    settings = env.settings()
    async with env.backend.client(settings) as one, env.backend.client(settings) as two:

        async def pull(replica: httpx.AsyncClient) -> bytes:
            r = await replica.get(f"/v2/up/{repo}/blobs/{digest}")
            assert r.status_code == 200, r.text
            return r.content

        bodies = await asyncio.gather(*(pull(c) for c in (one, two) for _ in range(5)))
    assert all(body == data for body in bodies)
    assert _upstream_requests(env.counting, "GET", f"/blobs/{digest}") == 1
    with pytest.raises(PathNotFound):  # released once the blob was stored
        await storage.stat(paths.fill_claim(Digest.parse(digest)))


async def _serve(app: Any) -> tuple[Any, int]:
    """An aiohttp application on a free loopback port: (runner, port)."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    return runner, sock.getsockname()[1]


async def test_bearer_tokens_are_cached_and_redirects_get_no_credentials(
    storage_root: Path, backend: Backend, tmp_path: Path
) -> None:
    """A Docker-Hub-like upstream (aiohttp): a Bearer challenge, a token endpoint taking Basic
    credentials, blobs answered with a 307 to another origin (blob storage)."""
    from aiohttp import web

    blobs = {upstreams.digest_of(d): d for d in (os.urandom(5000), os.urandom(7000))}
    tokens_issued: list[str] = []
    storage_auth: list[str | None] = []

    async def storage_get(request: web.Request) -> web.Response:
        storage_auth.append(request.headers.get("Authorization"))
        return web.Response(body=blobs[request.match_info["digest"]])

    store = web.Application()
    store.router.add_get("/obj/{digest}", storage_get)
    store_runner, store_port = await _serve(store)

    registry = web.Application()
    port_box: list[int] = []

    def challenge() -> web.Response:
        realm = f"http://127.0.0.1:{port_box[0]}/token"
        header = f'Bearer realm="{realm}",service="hub.test"'
        return web.Response(status=401, headers={"WWW-Authenticate": header})

    async def token(request: web.Request) -> web.Response:
        basic = base64.b64encode(f"reader:{upstreams.PASSWORD}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {basic}":
            return web.Response(status=401)
        assert request.query["service"] == "hub.test"
        tokens_issued.append(request.query["scope"])
        return web.json_response({"token": f"tok-{len(tokens_issued)}", "expires_in": 300})

    async def base(request: web.Request) -> web.Response:
        return challenge()

    async def blob(request: web.Request) -> web.Response:
        if not request.headers.get("Authorization", "").startswith("Bearer tok-"):
            return challenge()
        location = f"http://127.0.0.1:{store_port}/obj/{request.match_info['digest']}"
        return web.Response(status=307, headers={"Location": location})

    registry.router.add_get("/v2/", base)
    registry.router.add_get("/token", token)
    registry.router.add_get("/v2/org/app/blobs/{digest}", blob)
    runner, port = await _serve(registry)
    port_box.append(port)
    try:
        settings = proxy_settings(backend, f"http://127.0.0.1:{port_box[0]}", tmp_path)
        settings.proxy.upstreams[0].username = "reader"
        async with backend.client(settings) as mirror:
            for digest, data in blobs.items():
                r = await mirror.get(f"/v2/up/org/app/blobs/{digest}")
                assert r.status_code == 200, r.text
                assert r.content == data
        assert tokens_issued == ["repository:org/app:pull"]  # one token for both fetches
        assert storage_auth == [None, None]  # credentials never follow the redirect
    finally:
        await runner.cleanup()
        await store_runner.cleanup()


async def test_gc_evicts_cache_blobs_by_policy_and_pulls_refill_them(
    env: ProxyEnv,
    storage: StorageDriver,
) -> None:
    repo = _repo()
    shared, cached = os.urandom(300_000), os.urandom(400_000)
    digest, manifest = env.push_image(repo, "v1", [shared, cached])
    body = json.loads(manifest)
    config = body["config"]["digest"]
    shared_d, cached_d = (layer["digest"] for layer in body["layers"])
    settings = env.settings()
    async with env.backend.app(settings) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://r") as mirror:
            for d in (config, shared_d, cached_d):
                r = await mirror.get(f"/v2/up/{repo}/blobs/{d}")
                assert r.status_code == 200
            assert (await mirror.get(f"/v2/up/{repo}/manifests/v1")).status_code == 200
            # A local repository also uses the shared layer: never evicted.
            local_config = b'{"local": true}'
            await push_blob(mirror, "local/app", shared)
            local_manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": upstreams.OCI_MANIFEST,
                    "config": {
                        "mediaType": "application/vnd.oci.image.config.v1+json",
                        "digest": await push_blob(mirror, "local/app", local_config),
                        "size": len(local_config),
                    },
                    "layers": [body["layers"][0]],
                }
            ).encode()
            r = await mirror.put(
                "/v2/local/app/manifests/v1",
                content=local_manifest,
                headers={"Content-Type": upstreams.OCI_MANIFEST},
            )
            assert r.status_code == 201, r.text
            await app.state.registry.proxy.access.flush()  # as the background task would
            await storage.stat(paths.blob_access(Digest.parse(cached_d)))

            await asyncio.sleep(2.2)  # past GC's clock slack at S3's one-second resolution
            policy = EvictionPolicy(frozenset({"up"}), unused_seconds=3600)
            report = await gc(storage, grace_period=0, eviction=policy)
            assert report.ok and report.blobs_evictable == 0 and report.blobs_deleted == 0

            policy = EvictionPolicy(frozenset({"up"}), max_bytes=1)
            report = await gc(storage, grace_period=0, eviction=policy)
            assert report.ok, report.errors
            assert report.blobs_evictable == 2 and report.blobs_deleted == 2
            assert not await _stored(storage, cached_d) and not await _stored(storage, config)
            assert await _stored(storage, shared_d) and await _stored(storage, digest)
            with pytest.raises(PathNotFound):
                await storage.stat(paths.layer_link(f"up/{repo}", Digest.parse(cached_d)))

            # The next pull fetches the evicted blob again; the local image is whole.
            env.counting.seen.clear()
            # This replica trusts what it saw for cache.link_staleness_seconds: skip the wait.
            blobs = app.state.registry.blobs
            blobs.links.discard(paths.layer_link(f"up/{repo}", Digest.parse(cached_d)))
            blobs.forget(Digest.parse(cached_d))
            r = await mirror.get(f"/v2/up/{repo}/blobs/{cached_d}")
            assert r.status_code == 200 and r.content == cached
            assert _upstream_requests(env.counting, "GET", f"/blobs/{cached_d}") == 1
            r = await mirror.get(f"/v2/local/app/blobs/{shared_d}")
            assert r.status_code == 200 and r.content == shared


async def test_fills_are_events(env: ProxyEnv, storage: StorageDriver) -> None:
    """What the cache fetches is recorded as `fill` (issue 13's action): the manifest by its
    tag, each blob once, actor `proxy` and the upstream's host; cache hits record nothing."""
    from event_receiver import Receiver

    from .test_events import endpoint, events_of, serving

    repo = _repo()
    digest, manifest = env.push_image(repo, "v1", [b"filled layer"])
    blobs = [d["digest"] for d in [json.loads(manifest)["config"], *json.loads(manifest)["layers"]]]
    receiver = Receiver().start()
    try:
        hook = endpoint(receiver, actions=["fill"])
        async with serving(env.backend, [hook], settings=env.settings()) as c:
            accept = {"Accept": upstreams.OCI_MANIFEST}
            for _ in range(2):  # the second round is served from the cache
                assert (
                    await c.get(f"/v2/up/{repo}/manifests/v1", headers=accept)
                ).status_code == 200
                for blob in blobs:
                    assert (await c.get(f"/v2/up/{repo}/blobs/{blob}")).status_code == 200
            await receiver.until(1 + len(blobs))
        events = events_of(receiver)
    finally:
        receiver.close()
    assert {e["action"] for e in events} == {"fill"}
    manifest_events = [e for e in events if e["target"]["mediaType"] == upstreams.OCI_MANIFEST]
    assert [(e["target"]["digest"], e["target"]["tag"]) for e in manifest_events] == [
        (digest, "v1")
    ]
    assert sorted(e["target"]["digest"] for e in events if e not in manifest_events) == sorted(
        blobs
    )
    for e in events:
        assert e["target"]["repository"] == f"up/{repo}"
        assert e["actor"]["name"] == "proxy"
        assert e["request"]["host"] == env.counting.endpoint.split("://", 1)[1]
    assert len(events) == 1 + len(blobs)  # nothing for the cache hits
