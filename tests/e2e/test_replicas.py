"""Two registry processes on one storage directory: an upload begun on one replica is
continued and finished on another (upload sessions live in storage, not in a process)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from .conftest import Server, Skopeo, location_path, target_kind, with_query
from .ocilayout import OCILayout, closure

pytestmark = pytest.mark.e2e


@pytest.fixture
def replicas(replica_pair: tuple[Server, Server]) -> tuple[Server, Server]:
    return replica_pair


def test_chunked_upload_across_two_replicas(replicas, repo: str):
    a, b = replicas
    data = os.urandom(1_500_000) + os.urandom(1_000_000)
    split = 1_500_000
    chunk1, chunk2 = data[:split], data[split:]
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    with a.client() as ca, b.client() as cb:
        r = ca.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202, r.text
        assert r.headers.get("Docker-Upload-UUID")
        loc = r.headers["Location"]

        r = ca.patch(
            loc,
            content=chunk1,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"0-{len(chunk1) - 1}",
            },
        )
        assert r.status_code == 202, r.text
        assert r.headers["Range"] == f"0-{len(chunk1) - 1}"
        loc = r.headers["Location"]

        # The second chunk goes to the other replica, which has never seen this session.
        r = cb.patch(
            location_path(loc),
            content=chunk2,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{split}-{len(data) - 1}",
            },
        )
        assert r.status_code == 202, r.text
        assert r.headers["Range"] == f"0-{len(data) - 1}"
        loc = r.headers["Location"]

        # Either replica reports the progress of the session.
        r = ca.get(location_path(loc))
        assert r.status_code == 204, r.text
        assert r.headers["Range"] == f"0-{len(data) - 1}"

        r = ca.put(with_query(location_path(loc), digest=digest))
        assert r.status_code == 201, r.text
        assert r.headers["Docker-Content-Digest"] == digest

        r = cb.head(f"/v2/{repo}/blobs/{digest}", follow_redirects=True)
        assert r.status_code == 200
        assert int(r.headers["Content-Length"]) == len(data)
        r = cb.get(f"/v2/{repo}/blobs/{digest}", follow_redirects=True)
        assert r.status_code == 200
        assert r.content == data


def test_out_of_order_chunk_on_other_replica_is_refused(replicas, repo: str):
    if target_kind() == "distribution":
        pytest.skip("Distribution 2.8.2 does not check Content-Range on PATCH")
    a, b = replicas
    chunk = os.urandom(100_000)
    with a.client() as ca, b.client() as cb:
        r = ca.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202
        r = ca.patch(
            r.headers["Location"],
            content=chunk,
            headers={"Content-Type": "application/octet-stream", "Content-Range": "0-99999"},
        )
        assert r.status_code == 202, r.text
        loc = location_path(r.headers["Location"])
        # A chunk that leaves a gap: 416, and the session is still at 100000 bytes.
        r = cb.patch(
            loc,
            content=chunk,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": "100010-200009",
            },
        )
        assert r.status_code == 416, (r.status_code, r.text)
        r = cb.get(loc)
        assert r.status_code == 204
        assert r.headers["Range"] == "0-99999"


def test_two_uvicorn_workers(tmp_path: Path, berth_factory, skopeo: Skopeo, repo: str):
    """`http.workers: 2` (from a --config file): one port, two processes; a multi-connection
    client (skopeo --all) and chunked uploads land on both and still agree."""
    if target_kind() != "berth":
        pytest.skip("berth's own configuration file")
    server = berth_factory.start(config={"http": {"workers": 2}})
    try:
        src = OCILayout(tmp_path / "src")
        index = src.add_platform_index(layers=3)
        src.tag(index.descriptor, "multi")
        remote = f"docker://{server.host}/{repo}:multi"
        skopeo.copy(f"oci:{src.path}:multi", remote, "--all", "--preserve-digests")
        assert skopeo.inspect_raw(remote) == index.body
        dst = OCILayout(tmp_path / "dst")
        skopeo.copy(remote, f"oci:{dst.path}:back", "--all", "--preserve-digests")
        for digest in closure(src, index.digest):
            assert dst.read_blob(digest) == src.read_blob(digest)
        data = os.urandom(300_000)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        for _ in range(3):  # new connections each time: the kernel spreads them over workers
            with server.client() as c:
                r = c.post(f"/v2/{repo}/blobs/uploads/")
                assert r.status_code == 202
                loc = location_path(r.headers["Location"])
            for i in range(3):
                chunk = data[i * 100_000 : (i + 1) * 100_000]
                with server.client() as c:
                    r = c.patch(
                        loc,
                        content=chunk,
                        headers={
                            "Content-Type": "application/octet-stream",
                            "Content-Range": f"{i * 100_000}-{(i + 1) * 100_000 - 1}",
                        },
                    )
                    assert r.status_code == 202, r.text
                    loc = location_path(r.headers["Location"])
            with server.client() as c:
                r = c.put(with_query(loc, digest=digest))
                assert r.status_code == 201, r.text
                assert c.get(f"/v2/{repo}/blobs/{digest}", follow_redirects=True).content == data
    finally:
        server.stop()


def test_delete_is_seen_at_once_by_every_worker(tmp_path: Path, berth_factory, repo: str):
    """Links are cached for cache.link_staleness_seconds, but a delete bumps a generation the
    workers of one server share: no worker answers from its cache after a delete it did not
    handle (the OCI conformance suite deletes, then expects 404 at once)."""
    if target_kind() != "berth":
        pytest.skip("berth's own configuration file")
    server = berth_factory.start(
        config={"http": {"workers": 2}, "cache": {"link_staleness_seconds": 600}}
    )
    try:
        for round_no in range(3):
            data = os.urandom(1000)
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            with server.client() as c:
                r = c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
                assert r.status_code == 201, r.text
            for _ in range(12):  # new connections: both workers learn the link
                with server.client() as c:
                    assert c.head(f"/v2/{repo}/blobs/{digest}").status_code == 200
            with server.client() as c:
                assert c.delete(f"/v2/{repo}/blobs/{digest}").status_code == 202
            answers = []
            for _ in range(12):
                with server.client() as c:
                    answers.append(c.head(f"/v2/{repo}/blobs/{digest}").status_code)
            assert answers == [404] * 12, (round_no, answers)
    finally:
        server.stop()


def test_workers_share_the_links_they_saw(tmp_path: Path, berth_factory, repo: str):
    """The workers of one server share their link cache: after a push through one of them,
    with the link then removed behind the server's back, every worker still answers from
    memory within the bound (a worker that had not seen the push would read storage: 404).
    The shared file (a few MiB under /dev/shm) goes when the server stops."""
    if target_kind() != "berth":
        pytest.skip("berth's own configuration file")
    server = berth_factory.start(
        config={"http": {"workers": 2}, "cache": {"link_staleness_seconds": 600}}
    )
    # The supervisor names the file in its workers' environment.
    pid = server.proc.pid
    worker = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0]
    environ = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
    (shared,) = [
        e.split(b"=", 1)[1].decode()
        for e in environ
        if e.startswith(b"BERTH_INTERNAL_CACHE_GENERATION_FILE=")
    ]
    try:
        data = os.urandom(1000)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with server.client() as c:
            r = c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
            assert r.status_code == 201, r.text
        (link,) = server.root.rglob(f"_layers/sha256/{digest.split(':')[1]}/link")
        link.unlink()  # behind the server's back: no worker knows
        answers = []
        for _ in range(12):  # new connections: the kernel spreads them over both workers
            with server.client() as c:
                r = c.head(f"/v2/{repo}/blobs/{digest}")
                answers.append((r.status_code, r.headers.get("Content-Length")))
        assert answers == [(200, "1000")] * 12, answers
        assert os.path.getsize(shared) > 1024 * 1024
    finally:
        server.stop()
    assert not os.path.exists(shared)
