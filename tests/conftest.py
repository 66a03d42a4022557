"""Fixtures shared by every test package: one S3 server of each kind per test process.

Each test that uses a server takes a fresh root prefix (or bucket) in it, so tests never see
each other's objects; starting SeaweedFS costs about a second, so it happens once per worker.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import s3_servers
import upstreams


@pytest.fixture(scope="session")
def moto_server() -> Iterator[s3_servers.S3Server]:
    server = s3_servers.start_moto()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def seaweedfs_server() -> Iterator[s3_servers.S3Server]:
    server = s3_servers.require_seaweedfs()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def distribution_upstream() -> Iterator[upstreams.Upstream]:
    """Distribution 2.8.2 with htpasswd auth: a real upstream for pull-through tests."""
    upstream = upstreams.start_distribution()
    yield upstream
    upstream.stop()


@pytest.fixture
def proxy(seaweedfs_server: s3_servers.S3Server) -> Iterator[s3_servers.FaultProxy]:
    """A fault-injecting proxy in front of this worker's SeaweedFS."""
    p = s3_servers.FaultProxy(seaweedfs_server.endpoint)
    yield p
    p.stop()


@pytest.fixture
def no_ca_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    # These machines set AWS_CA_BUNDLE; the test endpoints are plain http: make it explicit.
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
