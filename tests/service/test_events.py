"""Registry events: recorded in the journal before the response, delivered by a background
loop to a real aiohttp receiver, in Distribution's envelope or as CloudEvents.

Tests of what is driver-specific (the journal, the claims, progress, dead letters) take
``backend`` and run on the filesystem, moto and SeaweedFS; the body formats and filters are
the same on every driver and run on the filesystem (they take ``storage_root``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from berth.cli import main
from berth.config import NotificationSettings, Settings
from berth.events import signing
from berth.events.formats import cloudevent
from berth.events.journal import batch_keys
from berth.events.model import GC_ORIGIN, Event, Origin, Target
from berth.events.service import EventDelivery
from berth.storage import paths
from berth.storage.driver import PathNotFound, StorageDriver
from event_receiver import Receiver
from tls_certs import write_cert

from .conftest import Backend, push_blob, push_image, sha256

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EVENTS = "application/vnd.docker.distribution.events.v1+json"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.close()


def endpoint(receiver: Receiver, name: str = "hook", **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": receiver.url, "backoff_seconds": 0.05, **extra}


@contextlib.asynccontextmanager
async def serving(
    backend: Backend,
    endpoints: list[dict[str, Any]],
    settings: Settings | None = None,
    **notifications: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    """An app with events on, and its delivery loops running (ASGITransport runs no lifespan,
    so they are started here as the lifespan starts them). ``settings``: the rest of the
    configuration (default: the backend's, without redirects)."""
    settings = settings or backend.settings(redirect=False)
    settings.notifications = NotificationSettings(
        endpoints=endpoints, **{"poll_seconds": 0.1, **notifications}
    )
    async with backend.app(settings) as app:
        reg = app.state.registry
        delivery = EventDelivery(reg.driver, settings.notifications, reg.recorder.journal)
        await delivery.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://registry") as c:
                yield c
        finally:
            await delivery.stop()


def events_of(receiver: Receiver) -> list[dict[str, Any]]:
    """Every event received in Distribution's envelope, in arrival order."""
    return [e for body in receiver.bodies() for e in body["events"]]


async def journal(storage: StorageDriver) -> list[str]:
    return await batch_keys(storage)


def metric(name: str, endpoint: str) -> float:
    return REGISTRY.get_sample_value(name, {"endpoint": endpoint}) or 0.0


async def eventually(check: Callable[[], bool], within: float = 60.0) -> None:
    """Wait until ``check`` holds (a generous bound for a loaded machine, not a timing test)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met")
        await asyncio.sleep(0.05)


# -- bodies --------------------------------------------------------------------------------------


async def test_push_pull_delete_in_distributions_envelope(
    storage_root: Path, backend: Backend, receiver: Receiver
) -> None:
    hook = endpoint(receiver, actions=["push", "pull", "delete", "mount"])
    async with serving(backend, [hook]) as client:
        digest, body = await push_image(client, "team/app", "v1", layers=1)
        manifest = json.loads(body)
        r = await client.get(
            "/v2/team/app/manifests/v1",
            headers={"Accept": MANIFEST, "User-Agent": "skopeo/1.0", "X-Request-Id": "req-1"},
        )
        assert r.status_code == 200
        r = await client.post(
            "/v2/other/blobs/uploads/",
            params={"mount": manifest["layers"][0]["digest"], "from": "team/app"},
        )
        assert r.status_code == 201
        assert (await client.delete("/v2/team/app/manifests/v1")).status_code == 202
        assert (await client.delete(f"/v2/team/app/manifests/{digest}")).status_code == 202
        layer_digest = manifest["layers"][0]["digest"]
        assert (await client.delete(f"/v2/other/blobs/{layer_digest}")).status_code == 202
        await receiver.until(8)
    for received in receiver.received:
        assert received.headers["Content-Type"] == EVENTS
        assert "Berth-Signature" not in received.headers  # no secret configured
    events = events_of(receiver)
    assert [(e["action"], e["target"].get("tag")) for e in events] == [
        ("push", None),  # the layer
        ("push", None),  # the config
        ("push", "v1"),
        ("pull", "v1"),
        ("mount", None),
        ("delete", "v1"),
        ("delete", None),
        ("delete", None),
    ]
    layer, config = manifest["layers"][0], manifest["config"]
    for event, blob in zip(events[:2], (layer, config), strict=True):
        assert event["target"] == {
            "mediaType": "application/octet-stream",
            "repository": "team/app",
            "digest": blob["digest"],
            "size": blob["size"],
            "length": blob["size"],
            "url": f"http://registry/v2/team/app/blobs/{blob['digest']}",
        }
        assert event["request"]["method"] == "POST"
    push, pull, mount, untag, delete, unlink = events[2:]
    assert push["target"] == {
        "mediaType": MANIFEST,
        "repository": "team/app",
        "digest": digest,
        "size": len(body),
        "length": len(body),
        "url": f"http://registry/v2/team/app/manifests/{digest}",
        "tag": "v1",
    }
    assert push["request"]["method"] == "PUT"
    assert push["request"]["host"] == "registry"
    assert push["request"]["addr"].startswith("127.0.0.1:")
    assert push["actor"] == {}  # anonymous
    assert push["source"]["instanceID"] and push["source"]["addr"]
    assert push["timestamp"].endswith("Z")
    assert pull["target"]["digest"] == digest and pull["target"]["tag"] == "v1"
    assert pull["request"] == {
        "id": "req-1",
        "addr": pull["request"]["addr"],
        "host": "registry",
        "method": "GET",
        "useragent": "skopeo/1.0",
    }
    assert mount["target"]["repository"] == "other"
    assert mount["target"]["fromRepository"] == "team/app"
    assert mount["target"]["digest"] == layer["digest"]
    assert mount["target"]["size"] == layer["size"]
    assert untag["target"] == {
        "mediaType": "",
        "repository": "team/app",
        "digest": digest,
        "url": f"http://registry/v2/team/app/manifests/{digest}",
        "tag": "v1",
    }
    assert delete["target"]["digest"] == digest and delete["target"]["mediaType"] == MANIFEST
    assert delete["request"]["method"] == "DELETE"
    assert unlink["target"] == {
        "mediaType": "application/octet-stream",
        "repository": "other",
        "digest": layer["digest"],
        "url": f"http://registry/v2/other/blobs/{layer['digest']}",
    }
    assert len({e["id"] for e in events}) == len(events)  # receivers deduplicate by id


async def test_cloudevents_signed_for_a_referrer(
    storage_root: Path, backend: Backend, receiver: Receiver, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    hook = endpoint(receiver, format="cloudevents", secret_file=str(secret))
    async with serving(backend, [hook]) as client:
        subject, body = await push_image(client, "app", "v1", layers=1)
        empty = await push_blob(client, "app", b"{}")
        sbom = await push_blob(client, "app", b'{"spdxVersion": "SPDX-2.3"}')
        referrer = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "artifactType": "application/spdx+json",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": empty,
                "size": 2,
            },
            "layers": [{"mediaType": "application/spdx+json", "digest": sbom, "size": 27}],
            "subject": {"mediaType": MANIFEST, "digest": subject, "size": len(body)},
        }
        raw = json.dumps(referrer).encode()
        r = await client.put(
            f"/v2/app/manifests/{sha256(raw)}", content=raw, headers={"Content-Type": MANIFEST}
        )
        assert r.status_code == 201
        received = await receiver.until(6)
    for request in received:
        assert request.headers["Content-Type"] == "application/cloudevents+json"
        assert signing.verify(b"s3cret", request.raw, request.headers["Berth-Signature"])
        assert not signing.verify(b"other", request.raw, request.headers["Berth-Signature"])
        assert not signing.verify(b"s3cret", request.raw + b" ", request.headers["Berth-Signature"])
    bodies = [r.body for r in received]
    blob, manifest = "dev.berth.blob.pushed", "dev.berth.manifest.pushed"
    assert [b["type"] for b in bodies] == [blob, blob, manifest, blob, blob, manifest]
    pushed, ref = bodies[2], bodies[5]
    assert pushed["specversion"] == "1.0"
    assert pushed["source"] == "http://registry"
    assert pushed["subject"] == "app:v1"
    assert pushed["datacontenttype"] == "application/json"
    assert pushed["id"] == pushed["data"]["id"] and pushed["time"] == pushed["data"]["timestamp"]
    assert pushed["data"]["target"]["digest"] == subject
    assert "subject" not in pushed["data"]["target"]
    assert ref["subject"] == f"app@{sha256(raw)}"
    assert ref["data"]["target"]["subject"] == subject
    assert ref["data"]["target"]["artifactType"] == "application/spdx+json"


async def test_a_push_by_digest_has_an_event_per_tag_parameter(
    storage_root: Path, backend: Backend, receiver: Receiver
) -> None:
    async with serving(backend, [endpoint(receiver, actions=["push"])]) as client:
        digest, body = await push_image(client, "app", None, layers=1)  # by digest, no tags
        r = await client.put(
            f"/v2/app/manifests/{digest}?tag=a&tag=b",
            content=body,
            headers={"Content-Type": MANIFEST},
        )
        assert r.status_code == 201
        await receiver.until(5)
    manifests = [e["target"] for e in events_of(receiver) if e["target"]["mediaType"] == MANIFEST]
    assert [(t["digest"], t.get("tag")) for t in manifests] == [
        (digest, None),
        (digest, "a"),
        (digest, "b"),
    ]


def test_cloudevents_types_subjects_and_sources() -> None:
    gc = Event("delete", "manifest", Target("app", digest="sha256:" + "a" * 64), GC_ORIGIN)
    untag = Event("delete", "tag", Target("app", tag="v1"), Origin(base_url="https://r.example"))
    mount = Event("mount", "blob", Target("b", "application/octet-stream", "sha256:1"), Origin())
    bodies = [cloudevent(e) for e in (gc, untag, mount)]
    assert [b["type"] for b in bodies] == [
        "dev.berth.manifest.deleted",
        "dev.berth.tag.deleted",
        "dev.berth.blob.mounted",
    ]
    assert [b["subject"] for b in bodies] == ["app@sha256:" + "a" * 64, "app:v1", "b@sha256:1"]
    # Without a base URL (a GC run), the source names the registry instance.
    assert bodies[0]["source"] == f"urn:berth:{gc.instance_id}"
    assert bodies[1]["source"] == "https://r.example"
    assert bodies[0]["data"]["actor"] == {"name": "gc"}


async def test_filters_by_action_repository_and_media_type(
    storage_root: Path, backend: Backend, receiver: Receiver
) -> None:
    other = Receiver().start()
    try:
        hooks = [
            endpoint(receiver, "team-a", repositories=["team-a/*"]),  # default: all but pull
            endpoint(other, "pulls", actions=["pull"], media_types=[MANIFEST]),
        ]
        async with serving(backend, hooks) as client:
            await push_image(client, "team-a/app", "v1", layers=1)
            await push_image(client, "team-a/deep/app", "v1", layers=1)  # * is one component
            await push_image(client, "team-b/app", "v1", layers=1)
            docker = "application/vnd.docker.distribution.manifest.v2+json"
            await push_image(client, "team-b/old", "v1", layers=1, media_type=docker)
            for repo in ("team-a/app", "team-b/app", "team-b/old"):
                r = await client.get(f"/v2/{repo}/manifests/v1")
                assert r.status_code == 200
            await receiver.until(3)
            await other.until(2)
            # Let the loops finish whatever else they might (wrongly) send.
            await asyncio.sleep(0.5)
        a = events_of(receiver)
        assert [e["target"]["repository"] for e in a] == ["team-a/app"] * 3
        assert {e["action"] for e in a} == {"push"}
        pulls = events_of(other)
        assert [(e["action"], e["target"]["repository"]) for e in pulls] == [
            ("pull", "team-a/app"),
            ("pull", "team-b/app"),
        ]
    finally:
        other.close()


async def test_nothing_is_recorded_without_endpoints(
    backend: Backend, client: httpx.AsyncClient, storage: StorageDriver
) -> None:
    await push_image(client, "app", "v1")
    assert (await client.get("/v2/app/manifests/v1")).status_code == 200
    assert await journal(storage) == []
    with pytest.raises(PathNotFound):
        await storage.list(paths.EVENTS)


async def test_events_nobody_wants_are_not_journaled(
    storage_root: Path, backend: Backend, receiver: Receiver, storage: StorageDriver
) -> None:
    async with serving(backend, [endpoint(receiver, actions=["delete"])]) as client:
        await push_image(client, "app", "v1")
        assert (await client.get("/v2/app/manifests/v1")).status_code == 200
        assert await journal(storage) == []


# -- the journal, claims and delivery, on every driver ------------------------------------------


async def test_receiver_down_then_up_every_event_in_order(
    backend: Backend, receiver: Receiver, storage: StorageDriver
) -> None:
    receiver.stop()  # connections refused
    pushed: dict[str, list[str]] = {"a": [], "b": []}
    hook = endpoint(receiver, "down", max_attempts=1000, max_backoff_seconds=0.2)
    delivered = metric("berth_events_delivered_total", "down")
    latencies = metric("berth_events_delivery_latency_seconds_count", "down")
    async with serving(backend, [hook]) as client:
        for i in range(4):
            for repo in ("a", "b"):
                pushed[repo].append(await push_blob(client, repo, f"{repo}{i}".encode()))
        # Recorded before each response: in storage now, although nothing could be sent.
        assert await journal(storage)
        assert receiver.received == []
        await eventually(lambda: metric("berth_events_pending", "down") == 8)
    # A restart (a new process) finds them in storage and delivers them once the receiver is up.
    receiver.start()
    async with serving(backend, [hook]):
        await receiver.until(8)
        await eventually(lambda: metric("berth_events_pending", "down") == 0)
        await asyncio.sleep(0.3)
    assert metric("berth_events_delivered_total", "down") - delivered == 8
    assert metric("berth_events_delivery_latency_seconds_count", "down") - latencies == 8
    events = events_of(receiver)
    assert len(events) == 8 and len({e["id"] for e in events}) == 8
    for repo, digests in pushed.items():
        assert [e["target"]["digest"] for e in events if e["target"]["repository"] == repo] == (
            digests
        )


async def test_finished_batches_are_deleted_and_a_blocked_endpoint_keeps_only_its_own(
    backend: Backend, receiver: Receiver, storage: StorageDriver
) -> None:
    other = Receiver().start()
    receiver.stop()  # endpoint a is down; b is up
    retry = {"max_attempts": 1000, "max_backoff_seconds": 0.2}
    hooks = [
        endpoint(receiver, "a", repositories=["a"], **retry),
        endpoint(other, "b", repositories=["b"]),
    ]

    async def journal_has(count: int) -> None:
        for _ in range(600):
            if len(await journal(storage)) == count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"journal holds {await journal(storage)}, not {count} batches")

    try:
        async with serving(backend, hooks) as client:
            waiting = await push_blob(client, "a", b"for a")
            for i in range(3):
                await push_blob(client, "b", b"for b %d" % i)
            await other.until(3)
            # b's batches hold nothing for a: a finishes them although it is stuck before them.
            await journal_has(1)
            receiver.start()
            await receiver.until(1)
            await journal_has(0)
            if backend.kind == "filesystem":  # emptied, not pruned: requests create in it
                assert await storage.list(paths.EVENT_JOURNAL) == []
        assert [e["target"]["digest"] for e in events_of(receiver)] == [waiting]
    finally:
        other.close()


async def test_concurrent_requests_share_journal_writes(
    backend: Backend, receiver: Receiver, storage: StorageDriver
) -> None:
    receiver.stop()  # keep the journal as written
    async with serving(backend, [endpoint(receiver)]) as client:
        await asyncio.gather(*(push_blob(client, "app", b"blob %d" % i) for i in range(20)))
        keys = await journal(storage)
        recorded = [
            line for k in keys for line in (await storage.get(paths.event_batch(k))).splitlines()
        ]
    assert len(recorded) == 20
    assert len(keys) < 20  # group commit: several events per storage write


async def test_two_replicas_deliver_each_event_once(backend: Backend, receiver: Receiver) -> None:
    hooks = [endpoint(receiver)]
    async with serving(backend, hooks) as one, serving(backend, hooks) as two:
        for i in range(6):
            await push_blob(one if i % 2 else two, "app", b"blob %d" % i)
        await receiver.until(6)
        await asyncio.sleep(1.0)  # several poll rounds of both replicas
    events = events_of(receiver)
    assert len(events) == 6
    assert len({e["id"] for e in events}) == 6


async def test_a_dead_replicas_claim_is_taken_over(
    backend: Backend, receiver: Receiver, storage: StorageDriver
) -> None:
    hook = endpoint(receiver, timeout_seconds=0.2)
    notifications = NotificationSettings(endpoints=[hook], claim_ttl_seconds=1)
    # A replica that took the claim and died: nobody renews or releases it.
    dead = EventDelivery(storage, notifications).deliveries[0].claim
    assert await dead.hold()
    async with serving(backend, [hook], claim_ttl_seconds=1) as client:
        digest = await push_blob(client, "app", b"first")
        await receiver.until(1)  # only once the dead claim expired: the next one took over
    assert [e["target"]["digest"] for e in events_of(receiver)] == [digest]
    assert await storage.list(paths.event_claims("hook")) == ["000000000001"]
    assert not await dead.hold()  # were it to wake up, it would find the claim taken


async def test_failed_events_become_dead_letters_and_later_ones_go_on(
    backend: Backend, receiver: Receiver, storage: StorageDriver
) -> None:
    receiver.mode = "refuse"
    hook = endpoint(receiver, "dl", max_attempts=2)
    failed = metric("berth_events_failed_total", "dl")
    dead = metric("berth_events_dead_lettered_total", "dl")
    async with serving(backend, [hook]) as client:
        lost = await push_blob(client, "app", b"refused")
        await eventually(lambda: metric("berth_events_dead_lettered_total", "dl") > dead)
        receiver.mode = "ok"
        kept = await push_blob(client, "app", b"accepted")
        await receiver.until(1)
    (name,) = await storage.list(paths.dead_letters("dl"))
    letter = json.loads(await storage.get(paths.dead_letter("dl", name)))
    assert letter["event"]["target"]["digest"] == lost
    assert letter["attempts"] == 2 and "503" in letter["error"]
    assert [e["target"]["digest"] for e in events_of(receiver)] == [kept]
    assert metric("berth_events_failed_total", "dl") - failed == 2


async def test_a_full_queue_drops_the_oldest(
    backend: Backend, receiver: Receiver, storage: StorageDriver
) -> None:
    receiver.stop()
    hook = endpoint(receiver, "small", queue_size=3, max_attempts=1000, max_backoff_seconds=0.1)
    dropped = metric("berth_events_dropped_total", "small")
    digests = []
    async with serving(backend, [hook]) as client:
        for i in range(6):
            digests.append(await push_blob(client, "app", b"blob %d" % i))
        await eventually(lambda: metric("berth_events_dropped_total", "small") - dropped == 3)
        receiver.start()
        await receiver.until(3)
        await asyncio.sleep(0.3)
    assert [e["target"]["digest"] for e in events_of(receiver)] == digests[3:]


async def test_a_hanging_receiver_does_not_block_pushes(
    backend: Backend, receiver: Receiver
) -> None:
    receiver.mode = "hang"
    async with serving(backend, [endpoint(receiver, timeout_seconds=30)]) as client:
        first = await push_blob(client, "app", b"first")
        await eventually(lambda: receiver.hanging == 1)  # the first event's delivery is stuck
        digests = [first]
        for i in range(5):  # every push answers while the receiver still holds the first
            digests.append(await push_blob(client, "app", b"next %d" % i))
        await push_image(client, "app", "v1", layers=1)
        assert receiver.hanging == 1 and receiver.received == []
        receiver.release()
        events = await receiver.until(9)
    assert [e.body["events"][0]["target"]["digest"] for e in events][:6] == digests


async def test_an_unreadable_journal_batch_is_skipped_not_blocking(
    storage_root: Path, backend: Backend, receiver: Receiver, storage: StorageDriver
) -> None:
    # Sorts first: written "before" anything the registry records.
    for key, junk in (("0-junk-1", b"not json\n"), ("0-junk-2", b'{"action": "push"}\n')):
        await storage.create(paths.event_batch(key), junk)
    async with serving(backend, [endpoint(receiver)]) as client:
        digest = await push_blob(client, "app", b"after the junk")
        await receiver.until(1)
    assert [e["target"]["digest"] for e in events_of(receiver)] == [digest]


# Replicas and `berth gc` both without a reservation reuse window (the environment reaches the
# CLI's settings too), so a zero-grace run removes what was pushed two seconds ago.
@pytest.mark.usefixtures("no_reservation_reuse")
async def test_berth_gc_deletes_are_events_of_actor_gc(
    storage_root: Path, backend: Backend, receiver: Receiver, tmp_path: Path
) -> None:
    hook = endpoint(receiver, actions=["delete"])
    async with serving(backend, [hook]) as client:
        digest, _ = await push_image(client, "app", None, layers=1)  # untagged
    await asyncio.sleep(2.1)  # past GC's one-second clock slack (grace period 0)
    config = tmp_path / "berth.yaml"
    config.write_text(
        json.dumps(
            {
                "storage": {"filesystem": {"root": str(storage_root)}},
                "notifications": {"endpoints": [hook]},
            }
        )
    )
    gc = ["gc", "--config", str(config), "--delete-untagged", "--grace-period", "0s", "--json"]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert await asyncio.to_thread(main, gc) == 0
    assert json.loads(out.getvalue())["manifests_deleted"] == 1
    async with serving(backend, [hook]):
        await receiver.until(3)
    events = events_of(receiver)
    assert {e["actor"]["name"] for e in events} == {"gc"}
    assert {e["request"]["method"] for e in events} == {""}
    manifests = [
        e["target"] for e in events if e["target"]["mediaType"] != "application/octet-stream"
    ]
    assert manifests == [{"mediaType": "", "repository": "app", "digest": digest}]


# -- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint_config", "message"),
    [
        ({"url": "http://ci.example:99999/hook"}, "endpoint 'ci': url: not a URL"),
        ({"url": "ftp://ci.example/hook"}, "endpoint 'ci': url: must be an http"),
        ({"format": "xml"}, "endpoint 'ci': format:"),
        ({"actions": ["push", "boom"]}, "endpoint 'ci': actions.1:"),
        ({"secret_file": "/nonexistent/secret"}, "endpoint 'ci': secret_file: cannot read"),
        ({"header_files": {"Authorization": "/nonexistent"}}, "endpoint 'ci': header_files"),
        ({"secret_env": "BERTH_TEST_UNSET_SECRET"}, "endpoint 'ci': secret_env: environment"),
        ({"headers": {"Bad Name": ["x"]}}, "endpoint 'ci': headers: 'Bad Name' is not an HTTP"),
        ({"headers": {"X-A": ["a\r\nHost: evil"]}}, "endpoint 'ci': headers: the value of X-A"),
    ],
)
def test_bad_configuration_stops_serve_naming_endpoint_and_key(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    endpoint_config: dict[str, Any],
    message: str,
) -> None:
    hook = {"name": "ci", "url": "http://ci.example/hook", **endpoint_config}
    config = tmp_path / "berth.yaml"
    config.write_text(json.dumps({"notifications": {"endpoints": [hook]}}))
    assert main(["serve", "--config", str(config), "--storage-root", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_duplicate_endpoint_names_stop_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hooks = [{"name": "ci", "url": "http://a.example/"}, {"name": "ci", "url": "http://b.example/"}]
    config = tmp_path / "berth.yaml"
    config.write_text(json.dumps({"notifications": {"endpoints": hooks}}))
    assert main(["serve", "--config", str(config)]) == 2
    assert "endpoint 'ci': name: used by two endpoints" in capsys.readouterr().err


# -- berth events --------------------------------------------------------------------------------


async def berth_events(*args: str) -> tuple[int, str]:
    """`berth events ...` in a thread (it runs its own event loop), with its stdout."""
    out = io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out):
            return main(["events", *args])

    return await asyncio.to_thread(run), out.getvalue()


async def test_berth_events_lists_pending_and_dead_letters_and_replays_them(
    storage_root: Path, backend: Backend, receiver: Receiver, tmp_path: Path
) -> None:
    hook = endpoint(receiver, "ci", max_attempts=1)
    config = tmp_path / "berth.yaml"
    config.write_text(
        json.dumps(
            {
                "storage": {"filesystem": {"root": str(storage_root)}},
                "notifications": {"endpoints": [hook]},
            }
        )
    )
    receiver.mode = "refuse"
    dead = metric("berth_events_dead_lettered_total", "ci")
    async with serving(backend, [hook]) as client:
        refused = await push_blob(client, "app", b"refused")
        await eventually(lambda: metric("berth_events_dead_lettered_total", "ci") > dead)
    settings = backend.settings()
    settings.notifications = NotificationSettings(endpoints=[hook])
    async with backend.client(settings) as client:  # no delivery loop: stays pending
        waiting = await push_blob(client, "app", b"waiting")

    code, out = await berth_events("list", "--config", str(config), "--json")
    assert code == 0
    listed = [json.loads(line) for line in out.splitlines()]
    assert [(i["state"], i["event"]["target"]["digest"]) for i in listed] == [
        ("pending", waiting),
        ("dead", refused),
    ]
    assert listed[1]["attempts"] == 1 and listed[1]["error"] == "HTTP 503"
    code, out = await berth_events("list", "--config", str(config), "--dead")
    assert code == 0 and len(out.splitlines()) == 1 and refused in out

    receiver.mode = "ok"
    code, out = await berth_events("replay", "--config", str(config), "--endpoint", "ci")
    assert code == 0 and refused in out
    code, out = await berth_events("list", "--config", str(config), "--dead")
    assert out == ""
    async with serving(backend, [hook]):
        await receiver.until(2)
    events = events_of(receiver)
    assert [e["target"]["digest"] for e in events] == [waiting, refused]
    assert events[1]["id"] == listed[1]["event"]["id"]  # the same event, deduplicable


async def test_an_https_receiver_with_a_private_ca(
    storage_root: Path, backend: Backend, tmp_path: Path
) -> None:
    """``ca_file`` makes a receiver whose certificate no public CA signed reachable; without
    it, delivery refuses that certificate (and keeps the event pending)."""
    cert, key = write_cert(tmp_path, serial=7)
    receiver = Receiver(tls=(cert, key)).start()
    try:
        trusted = endpoint(receiver, name="trusted", ca_file=str(cert))
        untrusted = endpoint(receiver, name="untrusted", max_attempts=100)
        async with serving(backend, [trusted, untrusted]) as client:
            digest = await push_blob(client, "app", b"over tls")
            await receiver.until(1)
            await asyncio.sleep(0.5)  # a few attempts of the untrusted endpoint
        assert [e["target"]["digest"] for e in events_of(receiver)] == [digest]
        assert metric("berth_events_delivered_total", "untrusted") == 0
        assert metric("berth_events_failed_total", "untrusted") >= 1
    finally:
        receiver.close()
