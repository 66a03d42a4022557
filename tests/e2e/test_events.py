"""Registry events from a real `berth serve`: what a skopeo push and an oras referrer push
produce, field by field, in both formats; and events pending at a SIGKILL delivered after
the restart."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import s3_servers
from berth.events import signing
from event_receiver import Receiver

from .conftest import BerthFactory, Server, Skopeo, push_blob, target_kind
from .ocilayout import MT_MANIFEST
from .test_referrers import SBOM_TYPE, _oras_push_sbom, _push_image
from .test_s3_replicas import berth_s3_config

pytestmark = pytest.mark.e2e

SECRET = b"hook-secret"
RETRY = {"backoff_seconds": 0.1, "max_backoff_seconds": 0.5, "max_attempts": 1000}


@pytest.fixture(autouse=True)
def berth_only() -> None:
    if target_kind() != "berth":
        pytest.skip("events are a berth feature (BERTH_E2E_TARGET=distribution)")


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    pair = (Receiver().start(), Receiver().start())
    yield pair
    for r in pair:
        r.close()


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")  # surrounding whitespace is not part of the key
    return path


def notifications(dist: Receiver, ce: Receiver, secret: Path) -> dict[str, Any]:
    return {
        "notifications": {
            "poll_seconds": 0.2,
            # A killed server's claims are taken over after this (by its restarted self).
            "claim_ttl_seconds": 2,
            "endpoints": [
                {"name": "dist", "url": dist.url, "timeout_seconds": 1, **RETRY},
                {
                    "name": "ce",
                    "url": ce.url,
                    "format": "cloudevents",
                    "secret_file": str(secret),
                    "timeout_seconds": 1,
                    **RETRY,
                },
            ],
        }
    }


def envelope_events(receiver: Receiver) -> list[dict[str, Any]]:
    return [e for body in receiver.bodies() for e in body["events"]]


def wait_for_tag(receiver: Receiver, tag: str, within: int = 60) -> None:
    """Until the manifest push of ``tag`` arrived (the last event of a push)."""
    for count in range(1, 1000):
        receiver.wait_for(count, within)
        bodies = receiver.bodies()
        if any(
            e["target"].get("tag") == tag
            for b in bodies
            for e in b.get("events", [b.get("data", {})])
        ):
            return
    raise AssertionError(f"no event for tag {tag}")


def test_skopeo_and_oras_pushes_as_envelope_and_cloudevents(
    tmp_path: Path,
    berth_factory: BerthFactory,
    skopeo: Skopeo,
    repo: str,
    receivers: tuple[Receiver, Receiver],
    secret: Path,
) -> None:
    dist, ce = receivers
    registry = berth_factory.start(config=notifications(dist, ce, secret))
    image = _push_image(tmp_path, registry, skopeo, repo)
    sbom = _oras_push_sbom(tmp_path, registry, repo, image)
    wait_for_tag(dist, "sbom")
    wait_for_tag(ce, "sbom")
    registry.stop()

    events = envelope_events(dist)
    for received in dist.received:
        assert received.headers["Content-Type"] == (
            "application/vnd.docker.distribution.events.v1+json"
        )
    assert {e["action"] for e in events} == {"push"}
    assert {e["target"]["repository"] for e in events} == {repo}
    (pushed,) = [e for e in events if e["target"].get("tag") == "v1"]
    assert pushed["target"] == {
        "mediaType": MT_MANIFEST,
        "repository": repo,
        "digest": image.digest,
        "size": len(image.body),
        "length": len(image.body),
        "url": f"{registry.url}/v2/{repo}/manifests/{image.digest}",
        "tag": "v1",
    }
    assert pushed["request"]["method"] == "PUT"
    assert pushed["request"]["host"] == registry.host
    assert pushed["request"]["addr"].startswith("127.0.0.1:")
    assert pushed["request"]["useragent"] and pushed["request"]["id"]
    assert pushed["source"]["instanceID"]
    # Every blob skopeo pushed (config and layers) has its event, before the manifest's.
    index = events.index(pushed)
    blobs = {(e["target"]["digest"], e["target"]["size"]) for e in events[:index]}
    assert blobs == {(b["digest"], b["size"]) for b in image.blobs}
    for e in events[:index]:
        assert e["target"]["mediaType"] == "application/octet-stream"
        assert e["target"]["url"] == f"{registry.url}/v2/{repo}/blobs/{e['target']['digest']}"
    (referrer,) = [e for e in events if e["target"].get("tag") == "sbom"]
    assert referrer["target"]["digest"] == sbom["digest"]
    assert referrer["target"]["subject"] == image.digest
    assert referrer["target"]["artifactType"] == SBOM_TYPE
    assert events.index(referrer) > index
    assert len({e["id"] for e in events}) == len(events)

    # The same events as CloudEvents, signed.
    bodies = [r.body for r in ce.received]
    for received in ce.received:
        assert received.headers["Content-Type"] == "application/cloudevents+json"
        assert signing.verify(SECRET, received.raw, received.headers["Berth-Signature"])
    assert [b["id"] for b in bodies] == [e["id"] for e in events]
    by_tag = {b["data"]["target"].get("tag"): b for b in bodies}
    assert by_tag["v1"]["type"] == "dev.berth.manifest.pushed"
    assert by_tag["v1"]["subject"] == f"{repo}:v1"
    assert by_tag["v1"]["source"] == registry.url
    assert by_tag["v1"]["specversion"] == "1.0"
    assert by_tag["v1"]["data"] == pushed
    assert by_tag["sbom"]["data"]["target"]["subject"] == image.digest
    assert {b["type"] for b in bodies if "tag" not in b["data"]["target"]} == {
        "dev.berth.blob.pushed"
    }


def test_events_pending_at_a_sigkill_are_delivered_after_restart(
    berth_factory: BerthFactory, repo: str, receivers: tuple[Receiver, Receiver], secret: Path
) -> None:
    dist, ce = receivers
    dist.stop()  # down: nothing can be delivered before the kill
    ce.stop()
    config = notifications(dist, ce, secret)
    registry: Server = berth_factory.start(config=config)
    with registry.client() as c:
        digests = [push_blob(c, repo, b"blob %d" % i) for i in range(5)]
    os.kill(registry.proc.pid, signal.SIGKILL)
    registry.proc.wait(timeout=30)

    dist.start()
    ce.start()
    restarted = berth_factory.start(root=registry.root, config=config)
    try:
        dist.wait_for(5)
        ce.wait_for(5)
    finally:
        restarted.stop()
    events = envelope_events(dist)
    assert [e["target"]["digest"] for e in events][: len(digests)] == digests
    assert {e["target"]["digest"] for e in events} == set(digests)
    assert {b["data"]["target"]["digest"] for b in ce.bodies()} == set(digests)


def test_two_replicas_on_one_seaweedfs_bucket_deliver_each_event_once(
    berth_factory: BerthFactory,
    seaweedfs_server: s3_servers.S3Server,
    repo: str,
    receivers: tuple[Receiver, Receiver],
) -> None:
    dist, _ = receivers
    config = berth_s3_config(seaweedfs_server, s3_servers.new_bucket(seaweedfs_server))
    config["notifications"] = {
        "poll_seconds": 0.2,
        "endpoints": [{"name": "dist", "url": dist.url, **RETRY}],
    }
    replicas = [berth_factory.start(config=config) for _ in range(2)]
    try:
        digests = []
        for i in range(10):  # alternate replicas: each records half, either may deliver
            with replicas[i % 2].client() as c:
                digests.append(push_blob(c, repo, b"blob %d" % i))
        dist.wait_for(10)
        time.sleep(2)  # ten poll rounds of each replica: room for a duplicate to show up
    finally:
        for r in replicas:
            r.stop()
    events = envelope_events(dist)
    assert sorted(e["target"]["digest"] for e in events) == sorted(digests)
    assert len({e["id"] for e in events}) == 10
    # Order per repository: each push answered before the next began.
    assert [e["target"]["digest"] for e in events] == digests
