"""Two registry processes on one storage directory: an upload begun on one replica is
continued and finished on another (upload sessions live in storage, not in a process)."""

from __future__ import annotations

import hashlib
import os

import pytest

from .conftest import Server, location_path, target_kind, with_query

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
