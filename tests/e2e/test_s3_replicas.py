"""Three ``berth serve`` replicas on one SeaweedFS bucket behind haproxy round-robin: no sticky
sessions, no shared secret, no database. Blob GETs are redirected to presigned SeaweedFS URLs,
which skopeo, containerd (``ctr``) and curl (with a Range) follow."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .conftest import (
    BerthFactory,
    Containerd,
    Server,
    Skopeo,
    free_port,
    push_blob,
    require_tool,
    stop_pid,
    with_query,
)
from .ocilayout import MT_CONFIG, MT_MANIFEST, OCILayout, canonical_json, closure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import s3_servers

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def weed() -> Iterator[s3_servers.S3Server]:
    server = s3_servers.require_seaweedfs()
    yield server
    server.stop()


def berth_s3_config(weed: s3_servers.S3Server, bucket: str, **s3: object) -> dict[str, object]:
    return {
        "storage": {"driver": "s3", "s3": weed.settings(bucket=bucket, **s3)},
        "observability": {"access_log": False},
    }


@dataclass
class Balancer:
    proc: subprocess.Popen[bytes]
    port: int
    config: Path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def client(self) -> httpx.Client:
        # No keep-alive: every request is a new connection, balanced on its own.
        return httpx.Client(
            base_url=self.url, timeout=60, limits=httpx.Limits(max_keepalive_connections=0)
        )


def start_haproxy(workdir: Path, replicas: list[Server]) -> Balancer:
    exe = require_tool("haproxy")
    port = free_port()
    servers = "\n".join(
        f"  server r{i} {s.host} check inter 300ms fall 1 rise 2" for i, s in enumerate(replicas)
    )
    config = workdir / f"haproxy-{port}.cfg"
    config.write_text(
        f"""global
  maxconn 512
defaults
  mode http
  timeout connect 2s
  timeout client 120s
  timeout server 120s
  option redispatch
  retries 3
  retry-on conn-failure empty-response
frontend registry
  bind 127.0.0.1:{port}
  default_backend replicas
backend replicas
  balance roundrobin
  option httpchk GET /v2/
  http-response set-header X-Berth-Replica %s
{servers}
"""
    )
    proc = subprocess.Popen(
        [exe, "-db", "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    lb = Balancer(proc, port, config)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{lb.url}/v2/", timeout=2).status_code == 200:
                return lb
        time.sleep(0.1)
    stop_pid(proc)
    raise RuntimeError("haproxy did not come up")


@pytest.fixture(scope="module")
def cluster(
    berth_factory: BerthFactory, weed: s3_servers.S3Server, e2e_workdir: Path
) -> Iterator[tuple[list[Server], Balancer]]:
    config = berth_s3_config(weed, s3_servers.new_bucket(weed))
    replicas = [berth_factory.start(config=config) for _ in range(3)]
    lb = start_haproxy(e2e_workdir, replicas)
    yield replicas, lb
    stop_pid(lb.proc)
    for r in replicas:
        r.stop()


def test_skopeo_push_and_pull_through_the_balancer(
    cluster: tuple[list[Server], Balancer], skopeo: Skopeo, tmp_path: Path, repo: str
) -> None:
    _, lb = cluster
    src = OCILayout(tmp_path / "src")
    image = src.add_image(layers=5, files_per_layer=4)
    src.tag(image.descriptor, "v1")
    remote = f"docker://{lb.host}/{repo}:v1"
    skopeo.copy(f"oci:{src.path}:v1", remote, "--preserve-digests")
    assert skopeo.inspect_raw(remote) == image.body
    dst = OCILayout(tmp_path / "dst")
    skopeo.copy(remote, f"oci:{dst.path}:back", "--preserve-digests")
    for digest in closure(src, image.digest):
        assert dst.read_blob(digest) == src.read_blob(digest)


def test_containerd_and_curl_follow_the_redirect(
    cluster: tuple[list[Server], Balancer],
    skopeo: Skopeo,
    containerd: Containerd,
    tmp_path: Path,
    repo: str,
) -> None:
    _, lb = cluster
    src = OCILayout(tmp_path / "src")
    image = src.add_image(layers=2)
    src.tag(image.descriptor, "v1")
    skopeo.copy(f"oci:{src.path}:v1", f"docker://{lb.host}/{repo}:v1", "--preserve-digests")
    ref = f"{lb.host}/{repo}:v1"
    containerd.ctr("images", "pull", "--plain-http", "--platform", "linux/amd64", ref)
    containerd.ctr("images", "check", f"name=={ref}")
    containerd.ctr("images", "rm", "--sync", ref, check=False)

    layer = image.blobs[-1]
    data = src.read_blob(layer["digest"])
    with lb.client() as c:
        r = c.get(f"/v2/{repo}/blobs/{layer['digest']}")
        assert r.status_code == 307
        assert r.headers["Location"].startswith("http://127.0.0.1:")
        assert "X-Amz-Signature=" in r.headers["Location"]
        r = c.head(f"/v2/{repo}/blobs/{layer['digest']}")  # HEAD: the registry answers
        assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(data)
    curl = require_tool("curl")
    url = f"{lb.url}/v2/{repo}/blobs/{layer['digest']}"
    part = subprocess.run(
        [curl, "-sfL", "-r", "10-99", url], capture_output=True, timeout=60, check=True
    )
    assert part.stdout == data[10:100]
    full = subprocess.run([curl, "-sfL", url], capture_output=True, timeout=60, check=True)
    assert full.stdout == data


def _manifest(c: httpx.Client, repo: str, seed: bytes) -> tuple[bytes, str]:
    config = canonical_json({"architecture": "amd64", "os": "linux", "seed": seed.hex()})
    layer = os.urandom(1000) + seed
    cfg_digest = push_blob(c, repo, config)
    layer_digest = push_blob(c, repo, layer)
    body = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": cfg_digest, "size": len(config)},
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest,
                    "size": len(layer),
                }
            ],
        }
    )
    return body, "sha256:" + hashlib.sha256(body).hexdigest()


def test_tag_moved_on_one_replica_is_seen_by_the_others_at_once(
    cluster: tuple[list[Server], Balancer], repo: str
) -> None:
    replicas, _ = cluster
    clients = [r.client() for r in replicas]
    try:
        a, b, c = clients
        body1, d1 = _manifest(a, repo, b"one")
        body2, d2 = _manifest(a, repo, b"two")
        headers = {"Content-Type": MT_MANIFEST}
        accept = {"Accept": MT_MANIFEST}
        assert a.put(f"/v2/{repo}/manifests/latest", content=body1, headers=headers).is_success
        for cl in clients:  # warms every replica's digest caches
            r = cl.get(f"/v2/{repo}/manifests/latest", headers=accept)
            assert r.headers["Docker-Content-Digest"] == d1
        assert b.put(f"/v2/{repo}/manifests/latest", content=body2, headers=headers).is_success
        for cl in clients:
            r = cl.get(f"/v2/{repo}/manifests/latest", headers=accept)
            assert r.headers["Docker-Content-Digest"] == d2 and r.content == body2
            r = cl.head(f"/v2/{repo}/manifests/latest", headers=accept)
            assert r.headers["Docker-Content-Digest"] == d2
        assert c.delete(f"/v2/{repo}/manifests/latest").status_code == 202
        for cl in clients:
            assert cl.get(f"/v2/{repo}/manifests/latest", headers=accept).status_code == 404
            assert cl.get(f"/v2/{repo}/tags/list").json().get("tags") in (None, [])
    finally:
        for cl in clients:
            cl.close()


def _patch(c: httpx.Client, loc: str, chunk: bytes, start: int) -> httpx.Response:
    return c.patch(
        loc,
        content=chunk,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{start + len(chunk) - 1}",
        },
    )


def test_chunked_upload_lands_on_every_replica(
    cluster: tuple[list[Server], Balancer], repo: str
) -> None:
    _, lb = cluster
    sizes = [3 * MiB, 9 * MiB, 1000, 7 * MiB + 3, 1]  # below, above and across part sizes
    chunks = [os.urandom(n) for n in sizes]
    data = b"".join(chunks)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    served = []
    with lb.client() as c:
        r = c.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202
        loc, offset = r.headers["Location"], 0
        for chunk in chunks:
            r = _patch(c, loc, chunk, offset)
            assert r.status_code == 202, r.text
            served.append(r.headers["X-Berth-Replica"])
            offset += len(chunk)
            assert r.headers["Range"] == f"0-{offset - 1}"
            loc = r.headers["Location"]
        r = c.get(loc)
        assert r.status_code == 204 and r.headers["Range"] == f"0-{offset - 1}"
        r = c.put(with_query(loc, digest=digest))
        assert r.status_code == 201, r.text
        assert len(set(served)) == 3, served
        r = c.get(f"/v2/{repo}/blobs/{digest}", follow_redirects=True)
        assert r.status_code == 200 and r.content == data


def _claimed(weed: s3_servers.S3Server, bucket: str, upload_id: str) -> bool:
    """Whether the session's writer state in the bucket holds a claim."""
    s3 = weed.boto3_client()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith(f"/_uploads/{upload_id}/data.berth-mpu"):
                body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                return bool(json.loads(body.partition(b"\n")[0]).get("claim"))
    return False


def test_replica_killed_mid_upload(
    berth_factory: BerthFactory,
    weed: s3_servers.S3Server,
    e2e_workdir: Path,
    repo: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The victim streams its part under a claim (the chunk continues a multipart upload the
    first chunk started): the other replicas refuse that chunk (416) while the claim lasts, and
    take it once the claim expires; nothing the victim sent is kept."""
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)  # the test's own S3 client (http)
    claim = 6.0
    bucket = s3_servers.new_bucket(weed)
    config = berth_s3_config(weed, bucket, upload_claim_seconds=claim)
    replicas = [berth_factory.start(config=config) for _ in range(3)]
    lb = start_haproxy(e2e_workdir, replicas)
    try:
        first, second, rest = os.urandom(10 * MiB), os.urandom(12 * MiB), os.urandom(3 * MiB)
        data = first + second + rest
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with lb.client() as c:
            r = c.post(f"/v2/{repo}/blobs/uploads/")
            r = _patch(c, r.headers["Location"], first, 0)
            assert r.status_code == 202, r.text
            loc = r.headers["Location"]
            path = httpx.URL(loc).raw_path.decode()
            victim = replicas[1]

            upload_id = path.rsplit("/", 1)[1]

            # Stream the second chunk straight to one replica and kill it half-way, once its
            # claim is in the bucket (socket buffers may hold what was sent so far unread).
            def body() -> Iterator[bytes]:
                for i in range(0, len(second), MiB):
                    if i == 6 * MiB:
                        deadline = time.monotonic() + 20
                        while not _claimed(weed, bucket, upload_id):
                            assert time.monotonic() < deadline, "the victim never claimed"
                            time.sleep(0.05)
                        os.kill(victim.proc.pid, signal.SIGKILL)
                        time.sleep(0.5)
                    yield second[i : i + MiB]

            errors: list[BaseException] = []

            def send() -> None:
                try:
                    with victim.client() as v:
                        v.patch(
                            path,
                            content=body(),
                            headers={
                                "Content-Type": "application/octet-stream",
                                "Content-Range": f"{len(first)}-{len(first) + len(second) - 1}",
                            },
                        )
                except BaseException as exc:
                    errors.append(exc)

            t = threading.Thread(target=send)
            t.start()
            t.join(60)
            killed = time.monotonic()
            assert errors, "the killed replica answered"
            victim.proc.wait(10)
            time.sleep(1.0)  # haproxy's health check marks it down

            # The client asks where the upload stands and finishes it on the others, once the
            # dead replica's claim has expired.
            r = c.get(loc)
            assert r.status_code == 204, r.text
            assert r.headers["Range"] == f"0-{len(first) - 1}"
            r = _patch(c, loc, second, len(first))
            assert r.status_code == 416, r.text  # the claim is still live
            assert r.headers["Range"] == f"0-{len(first) - 1}"
            while r.status_code == 416 and time.monotonic() - killed < claim + 10:
                time.sleep(0.5)
                r = _patch(c, loc, second, len(first))
            assert r.status_code == 202, r.text
            assert time.monotonic() - killed < claim + 5  # busy for about the claim's life
            r = _patch(c, r.headers["Location"], rest, len(first) + len(second))
            assert r.status_code == 202, r.text
            r = c.put(with_query(r.headers["Location"], digest=digest))
            assert r.status_code == 201, r.text
            assert r.headers["X-Berth-Replica"] != "r1"
            r = c.get(f"/v2/{repo}/blobs/{digest}", follow_redirects=True)
            assert r.status_code == 200 and r.content == data
    finally:
        stop_pid(lb.proc)
        for r in replicas:
            r.stop()
