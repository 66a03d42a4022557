"""Fixtures for registry tests through the ASGI app (no network, no server process).

Distribution's ``testsuites`` pattern: every registry-level test that takes ``client`` (or
``backend``) runs once per storage driver: the filesystem, S3 on moto and S3 on a real
SeaweedFS server (which checks signatures). A test that inspects files under ``storage_root``
runs on the filesystem only; to inspect storage on every driver, take ``storage`` (a driver on
the same storage, another replica's view) instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

import s3_servers
from berth.app import create_app
from berth.config import S3Settings, Settings
from berth.storage.driver import StorageDriver
from berth.storage.factory import create_driver

DRIVERS = ("filesystem", "moto", "seaweedfs")
PART = 5 * 1024 * 1024  # the S3 minimum, so multipart paths run with little data


@contextlib.asynccontextmanager
async def s3_app_client(s3: S3Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app on these S3 settings, its lifespan running (driver started, closed)."""
    settings = Settings(
        storage={"driver": "s3", "s3": s3.model_dump(mode="python")},
        observability={"access_log": False},
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as c,
    ):
        yield c


def make_settings(root: Path, **storage: Any) -> Settings:
    return Settings(
        storage={"filesystem": {"root": root}, **storage},
        observability={"access_log": False},
    )


@dataclass
class Backend:
    """One storage location on one driver kind, and apps and drivers over it."""

    kind: str
    root: Path  # the filesystem driver's root
    s3: s3_servers.S3Server | None = None
    prefix: str = ""

    def settings(self, **storage: Any) -> Settings:
        if self.s3 is None:
            return make_settings(self.root, **storage)
        s3 = self.s3.settings(root_directory=self.prefix, part_size=PART)
        s3.update(storage.pop("s3", {}))
        return Settings(
            storage={"driver": "s3", "s3": s3, **storage},
            observability={"access_log": False},
        )

    @contextlib.asynccontextmanager
    async def driver(self, **storage: Any) -> AsyncIterator[StorageDriver]:
        """A started driver on this storage (each one is another replica's view)."""
        driver = create_driver(self.settings(**storage))
        await driver.start()
        try:
            yield driver
        finally:
            await driver.close()

    @contextlib.asynccontextmanager
    async def app(self, settings: Settings | None = None, **storage: Any) -> AsyncIterator[FastAPI]:
        """An app on this storage with its driver started (ASGITransport runs no lifespan)."""
        settings = settings or self.settings(**storage)
        driver = create_driver(settings)
        await driver.start()
        app = create_app(settings, driver=driver)
        try:
            yield app
        finally:
            proxy = app.state.registry.proxy  # its upstream sessions (lifespan is not run)
            if proxy is not None:
                await proxy.close()
            await driver.close()

    @contextlib.asynccontextmanager
    async def client(
        self, settings: Settings | None = None, **storage: Any
    ) -> AsyncIterator[httpx.AsyncClient]:
        async with self.app(settings, **storage) as app:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://registry") as c:
                yield c


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    # A test that reads files under storage_root can only mean the filesystem driver.
    kinds = ["filesystem"] if "storage_root" in metafunc.fixturenames else list(DRIVERS)
    metafunc.parametrize("backend", kinds, indirect=True)


@pytest.fixture(autouse=True)
def gc_lease_staleness(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process replicas list for GC tombstones on every reservation unless a test turns
    cache.gc_lease_staleness_seconds on (and tells its GC runs the same): request counts stay
    exact. test_gc_lease_staleness.py and the randomised GC rounds run with it on."""
    monkeypatch.setenv("BERTH_CACHE__GC_LEASE_STALENESS_SECONDS", "0")


@pytest.fixture
def no_reservation_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    """For tests that age storage (pretend time passed): the reservation reuse window
    (cache.reservation_reuse_seconds) runs on the process clock, which ageing does not move.
    tests/service/test_gc_reservation_reuse.py and test_gc_s3.py test the window itself."""
    monkeypatch.setenv("BERTH_CACHE__RESERVATION_REUSE_SECONDS", "0")


@pytest.fixture
def storage_root(tmp_path: Path) -> Path:
    return tmp_path / "registry"


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path, no_ca_bundle: None) -> Backend:
    kind = request.param
    root = tmp_path / "registry"
    if kind == "filesystem":
        return Backend(kind, root)
    server = request.getfixturevalue(f"{kind}_server")
    return Backend(kind, root, server, f"t-{uuid.uuid4().hex[:12]}")


@pytest.fixture
async def client(backend: Backend) -> AsyncIterator[httpx.AsyncClient]:
    async with backend.client(redirect=False) as c:
        yield c


@pytest.fixture
async def storage(backend: Backend) -> AsyncIterator[StorageDriver]:
    """The client's storage, through a driver of its own."""
    async with backend.driver() as driver:
        yield driver


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def push_blob(client: httpx.AsyncClient, name: str, data: bytes) -> str:
    digest = sha256(data)
    r = await client.post(f"/v2/{name}/blobs/uploads/", params={"digest": digest}, content=data)
    assert r.status_code == 201, r.text
    return digest


async def push_image(
    client: httpx.AsyncClient,
    name: str,
    tag: str | None = "latest",
    layers: int = 2,
    seed: bytes = b"x",
    media_type: str = "application/vnd.oci.image.manifest.v1+json",
    extra: dict[str, Any] | None = None,
) -> tuple[str, bytes]:
    """Push a small image (config + layers + manifest); returns (digest, manifest bytes)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed.hex()}).encode()
    config_type = (
        "application/vnd.oci.image.config.v1+json"
        if "oci" in media_type
        else "application/vnd.docker.container.image.v1+json"
    )
    layer_type = (
        "application/vnd.oci.image.layer.v1.tar+gzip"
        if "oci" in media_type
        else "application/vnd.docker.image.rootfs.diff.tar.gzip"
    )
    descriptors = []
    for i in range(layers):
        data = seed + b"layer" + bytes([i]) * 100
        descriptors.append(
            {
                "mediaType": layer_type,
                "digest": await push_blob(client, name, data),
                "size": len(data),
            }
        )
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": config_type,
            "digest": await push_blob(client, name, config),
            "size": len(config),
        },
        "layers": descriptors,
        **(extra or {}),
    }
    body = json.dumps(manifest).encode()
    digest = sha256(body)
    r = await client.put(
        f"/v2/{name}/manifests/{tag or digest}", content=body, headers={"Content-Type": media_type}
    )
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == digest
    return digest, body


def error_code(response: httpx.Response) -> str:
    return str(response.json()["errors"][0]["code"])
