"""The small-request path (issue 10): the dispatcher picks exactly the route Starlette's router
would, request metrics keep their names, labels and counts, and spans are still named by route
when tracing is on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from prometheus_client import REGISTRY

from berth.api.dispatch import Dispatcher
from berth.app import create_app
from berth.auth.middleware import match_route
from berth.config import Settings
from berth.storage.factory import create_driver

from .conftest import push_blob

WORDS = [
    "v2",
    "blobs",
    "uploads",
    "manifests",
    "tags",
    "list",
    "referrers",
    "_catalog",
    "a",
    "sha256:" + "0" * 64,
    "",
    "metrics",
    "healthz",
    "readyz",
    "storage",
    "auth",
    "token",
]
METHODS = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"]


def make_settings(root: Path, **observability: Any) -> Settings:
    return Settings(
        storage={"filesystem": {"root": root}},
        observability={"access_log": False, "storage_check_seconds": 0, **observability},
    )


def scope(method: str, path: str) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}


@pytest.fixture(scope="module")
def dispatchers(tmp_path_factory: pytest.TempPathFactory) -> list[Dispatcher]:
    root = tmp_path_factory.mktemp("dispatch")
    found = []
    for extra in ({}, {"metrics_port": 9999}):
        app = create_app(make_settings(root, **extra))
        dispatcher = app.router.middleware_stack
        assert isinstance(dispatcher, Dispatcher)
        found.append(dispatcher)
    return found


EDGES = [
    "/v2/",
    "/v2",
    "/",
    "/metrics",
    "/healthz",
    "/healthz/",
    "/healthz/storage",
    "/readyz",
    "/v2/_catalog",
    "/v2/a/_catalog",
    "/v2/a/tags/list",
    "/v2/a/b/c/tags/list",
    "/v2/tags/list",
    "/v2//tags/list",
    "/v2/a/blobs/uploads/",
    "/v2/a/blobs/uploads",
    "/v2/a/blobs/uploads/x",
    "/v2/a/blobs/uploads/x/",
    "/v2/a/blobs/b/blobs/sha256:x",
    "/v2//blobs/x",
    "/v2/blobs/x",
    "/v2/a/manifests/",
    "/v2/a/manifests/latest",
    "/v2/a/manifests/tags/list",
    "/v2/a/referrers/sha256:x",
    "/v2/a/blobs/uploads/manifests/x",
    "/v2/a/blobs/",
    "/x/blobs/y",
    "/v2/a/blobs/uploads//",
    "/v2///",
    "/v2/a/tags/list/",
]


@pytest.mark.parametrize("path", EDGES)
@pytest.mark.parametrize("method", METHODS)
def test_dispatcher_picks_the_routers_route(
    dispatchers: list[Dispatcher], path: str, method: str
) -> None:
    for dispatcher in dispatchers:
        _same_choice(dispatcher, method, path)


def _same_choice(dispatcher: Dispatcher, method: str, path: str) -> None:
    routes = list(dispatcher.router.routes)
    expected = match_route(routes, scope(method, path))
    route, child = dispatcher.select(scope(method, path))
    got = (
        (getattr(route, "path", None), dict((child or {}).get("path_params", {})))
        if route is not None
        else (None, {})
    )
    assert got == expected, (method, path)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(WORDS), min_size=0, max_size=7),
    st.sampled_from(METHODS),
)
def test_dispatcher_agrees_on_any_path(
    dispatchers: list[Dispatcher], words: list[str], method: str
) -> None:
    for dispatcher in dispatchers:
        _same_choice(dispatcher, method, "/" + "/".join(words))


def samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in REGISTRY.collect():
        for s in family.samples:
            if s.name == name:
                found[tuple(sorted(s.labels.items()))] = s.value
    return found


def count(**labels: str) -> float:
    return sum(
        value
        for key, value in samples("http_server_request_duration_seconds_count").items()
        if all(dict(key).get(k) == v for k, v in labels.items())
    )


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(tmp_path)
    driver = create_driver(settings)
    await driver.start()
    app = create_app(settings, driver=driver)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c
    await driver.close()


async def test_request_metrics_by_method_route_and_status(client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, "team/app", b"layer")
    blob = "/v2/{name}/blobs/{digest}"

    def counts() -> dict[str, float]:
        return {
            "head": count(
                http_request_method="HEAD", http_route=blob, http_response_status_code="200"
            ),
            "miss": count(
                http_request_method="HEAD", http_route=blob, http_response_status_code="404"
            ),
            "none": count(
                http_request_method="GET", http_route="", http_response_status_code="404"
            ),
            "405": count(http_route="/v2/", http_response_status_code="405"),
            "slash": count(http_route="/healthz", http_response_status_code="307"),
        }

    before = counts()
    for _ in range(3):
        assert (await client.head(f"/v2/team/app/blobs/{digest}")).status_code == 200
    assert (await client.head(f"/v2/other/blobs/{digest}")).status_code == 404
    assert (await client.get("/nowhere")).status_code == 404
    assert (await client.post("/v2/")).status_code == 405
    assert (await client.get("/healthz/", follow_redirects=False)).status_code == 307
    after = counts()
    assert {k: after[k] - before[k] for k in after} == {
        "head": 3,
        "miss": 1,
        "none": 1,
        "405": 1,
        "slash": 1,
    }
    text = (await client.get("/metrics")).text
    assert "http_server_request_duration_seconds_bucket{" in text
    assert 'http_route="/v2/{name}/blobs/{digest}"' in text
    assert "# TYPE http_server_request_duration_seconds histogram" in text
    active = samples("http_server_active_requests")
    # Only the /metrics request itself was in flight while the scrape ran.
    assert all(v == 0 for k, v in active.items() if dict(k)["http_request_method"] != "GET")


async def test_failures_carry_error_type(client: httpx.AsyncClient, monkeypatch: Any) -> None:
    app: Any = client._transport.app  # type: ignore[attr-defined]
    from berth.storage.driver import StorageError

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise StorageError("denied")

    monkeypatch.setattr(app.state.registry.tags, "all", broken)
    before = count(http_route="/v2/{name}/tags/list", error_type="500")
    assert (await client.get("/v2/app/tags/list")).status_code == 500
    assert count(http_route="/v2/{name}/tags/list", error_type="500") == before + 1


async def test_spans_named_by_route_when_tracing(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    settings = make_settings(tmp_path, tracing=True)
    driver = create_driver(settings)
    await driver.start()
    app = create_app(settings, driver=driver)
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as c:
            before = count(http_route="/v2/{name}/manifests/{reference}", http_request_method="GET")
            assert (await c.get("/v2/app/manifests/v1")).status_code == 404
            assert (await c.get("/nowhere")).status_code == 404
            after = count(http_route="/v2/{name}/manifests/{reference}", http_request_method="GET")
        assert after == before + 1  # metrics are recorded with tracing on too
        servers = [s for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.SERVER]
        names = [s.name for s in servers]
        assert "GET /v2/{name}/manifests/{reference}" in names
        span = servers[names.index("GET /v2/{name}/manifests/{reference}")]
        assert span.attributes is not None
        assert span.attributes["http.route"] == "/v2/{name}/manifests/{reference}"
        assert span.attributes["http.response.status_code"] == 404
        assert "GET" in names  # no route: named by method only, as before
    finally:
        exporter.shutdown()
        await driver.close()
