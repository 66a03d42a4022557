"""More real-client flows: docker schema 2 images, cross-repository mounts, ctr push, skopeo
tags/delete, umoci-built images, oras chunked uploads, concurrent pushes through two replicas,
and ``berth serve --config`` with a read-only store."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import (
    Containerd,
    Server,
    Skopeo,
    location_path,
    require_tool,
    run,
    target_kind,
)
from .ocilayout import MT_MANIFEST, OCILayout, closure, sha256_digest

pytestmark = pytest.mark.e2e

MT_DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def _push(skopeo: Skopeo, layout: OCILayout, tag: str, server: Server, ref: str, *flags: str):
    skopeo.copy(f"oci:{layout.path}:{tag}", f"docker://{server.host}/{ref}", *flags)


def test_docker_schema2_push_and_ctr_pull(
    tmp_path: Path, registry: Server, skopeo: Skopeo, containerd: Containerd, repo: str
):
    """skopeo converts to Docker schema 2 on push; the registry keeps its media type and bytes;
    containerd pulls it."""
    src = OCILayout(tmp_path / "src")
    image = src.add_image(layers=2)
    src.tag(image.descriptor, "v1")
    _push(skopeo, src, "v1", registry, f"{repo}:v2s2", "--format", "v2s2")

    raw = skopeo.inspect_raw(f"docker://{registry.host}/{repo}:v2s2")
    manifest = json.loads(raw)
    assert manifest["mediaType"] == MT_DOCKER_V2
    assert [la["mediaType"] for la in manifest["layers"]] == [MT_DOCKER_LAYER] * 2
    assert [la["digest"] for la in manifest["layers"]] == [b["digest"] for b in image.blobs[1:]]
    digest = sha256_digest(raw)
    with registry.client() as c:
        r = c.get(
            f"/v2/{repo}/manifests/v2s2", headers={"Accept": f"{MT_DOCKER_V2}, {MT_MANIFEST}"}
        )
        assert r.status_code == 200
        assert r.headers["Content-Type"].split(";")[0] == MT_DOCKER_V2
        assert r.headers["Docker-Content-Digest"] == digest
        assert r.content == raw

    ref = f"{registry.host}/{repo}:v2s2"
    containerd.ctr("images", "pull", "--plain-http", "--platform", "linux/amd64", ref)
    out = containerd.ctr("images", "ls").stdout
    row = next(line.split() for line in out.splitlines() if line.startswith(ref + " "))
    assert row[1] == MT_DOCKER_V2
    assert row[2] == digest


def test_cross_repository_copy_and_mount(
    tmp_path: Path, registry: Server, skopeo: Skopeo, repo: str
):
    src = OCILayout(tmp_path / "src")
    image = src.add_image(layers=2)
    src.tag(image.descriptor, "v1")
    _push(skopeo, src, "v1", registry, f"{repo}/a:v1", "--preserve-digests")
    # docker:// to docker:// on one registry: skopeo asks for cross-repository mounts.
    skopeo.copy(
        f"docker://{registry.host}/{repo}/a:v1",
        f"docker://{registry.host}/{repo}/b:v1",
        "--preserve-digests",
    )
    assert skopeo.inspect_raw(f"docker://{registry.host}/{repo}/b:v1") == image.body

    # The mount itself, by hand: 201 Created with the blob's location, no upload needed.
    layer = image.blobs[1]["digest"]
    with registry.client() as c:
        r = c.post(f"/v2/{repo}/c/blobs/uploads/", params={"mount": layer, "from": f"{repo}/a"})
        assert r.status_code == 201, (r.status_code, r.text)
        assert r.headers["Docker-Content-Digest"] == layer
        r = c.get(f"/v2/{repo}/c/blobs/{layer}", follow_redirects=True)
        assert r.status_code == 200
        assert r.content == src.read_blob(layer)
        # Mounting from a repository that does not hold the blob starts a normal upload.
        r = c.post(
            f"/v2/{repo}/d/blobs/uploads/", params={"mount": layer, "from": f"{repo}/nothing"}
        )
        assert r.status_code == 202, (r.status_code, r.text)
        assert c.delete(location_path(r.headers["Location"])).status_code in (204, 202)


def test_ctr_push(
    tmp_path: Path, registry: Server, skopeo: Skopeo, containerd: Containerd, repo: str
):
    """containerd as the pushing client (POST, then PUT of each blob with its whole body;
    manifest PUT). One layer is over 1 MiB, so its PUT is written straight to the blob's key
    (uploads._complete_whole). The push names the registry by another host name than the pull,
    so containerd cannot mount the blobs from the source repository and uploads them."""
    src = OCILayout(tmp_path / "src")
    image = src.add_image(layers=2, files_per_layer=1000)  # random files: ~2 MiB a layer
    assert max(d["size"] for d in image.blobs) > 1024 * 1024
    src.tag(image.descriptor, "v1")
    _push(skopeo, src, "v1", registry, f"{repo}/src:v1", "--preserve-digests")
    pulled = f"{registry.host}/{repo}/src:v1"
    pushed = f"localhost:{registry.port}/{repo}/dst:copy"
    containerd.ctr("images", "pull", "--plain-http", "--platform", "linux/amd64", pulled)
    containerd.ctr("images", "tag", pulled, pushed)
    containerd.ctr("images", "push", "--plain-http", "--platform", "linux/amd64", pushed)
    assert skopeo.inspect_raw(f"docker://{pushed}") == image.body
    log = registry.log.read_text()
    assert f"PUT /v2/{repo}/dst/blobs/uploads/" in log, "containerd mounted instead of uploading"
    assert f"PATCH /v2/{repo}/dst/" not in log
    dst = OCILayout(tmp_path / "dst")
    skopeo.copy(f"docker://{pushed}", f"oci:{dst.path}:back", "--preserve-digests")
    for digest in closure(src, image.digest):
        assert dst.read_blob(digest) == src.read_blob(digest)


def test_skopeo_list_tags_and_delete(tmp_path: Path, registry: Server, skopeo: Skopeo, repo: str):
    src = OCILayout(tmp_path / "src")
    image = src.add_image(layers=1)
    src.tag(image.descriptor, "v1")
    tags = ["v1", "v2", "latest"]
    for tag in tags:
        _push(skopeo, src, "v1", registry, f"{repo}:{tag}", "--preserve-digests")
    out = run([skopeo.path, "list-tags", "--tls-verify=false", f"docker://{registry.host}/{repo}"])
    listed = json.loads(out.stdout)
    assert sorted(listed["Tags"]) == sorted(tags)

    run(
        [
            skopeo.path,
            "--policy",
            str(skopeo.policy),
            "delete",
            "--tls-verify=false",
            f"docker://{registry.host}/{repo}:v1",
        ]
    )
    # skopeo deletes by digest: the manifest is gone, and so is every tag that named it.
    failed = run(
        [
            skopeo.path,
            "inspect",
            "--raw",
            "--tls-verify=false",
            f"docker://{registry.host}/{repo}:v2",
        ],
        check=False,
    )
    assert failed.returncode != 0
    with registry.client() as c:
        r = c.get(f"/v2/{repo}/manifests/{image.digest}", headers={"Accept": MT_MANIFEST})
        assert r.status_code == 404
        assert r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_umoci_built_image(tmp_path: Path, registry: Server, skopeo: Skopeo, repo: str):
    umoci = require_tool("umoci")
    layout = tmp_path / "umoci"
    run([umoci, "init", "--layout", str(layout)])
    run([umoci, "new", "--image", f"{layout}:base"])
    payload = tmp_path / "hello.txt"
    payload.write_text(f"hello from umoci {uuid.uuid4()}\n")
    run([umoci, "insert", "--image", f"{layout}:base", str(payload), "/hello.txt"])
    run([umoci, "config", "--image", f"{layout}:base", "--config.cmd", "/bin/sh"])
    local = skopeo.inspect_raw(f"oci:{layout}:base")

    skopeo.copy(
        f"oci:{layout}:base", f"docker://{registry.host}/{repo}:umoci", "--preserve-digests"
    )
    assert skopeo.inspect_raw(f"docker://{registry.host}/{repo}:umoci") == local
    back = tmp_path / "back"
    skopeo.copy(f"docker://{registry.host}/{repo}:umoci", f"oci:{back}:back", "--preserve-digests")
    bundle = tmp_path / "bundle"
    run([umoci, "unpack", "--image", f"{back}:back", str(bundle)])
    assert (bundle / "rootfs" / "hello.txt").read_text() == payload.read_text()


def test_oras_chunked_push_and_pull(tmp_path: Path, registry: Server, repo: str):
    """oras-py's chunked upload (PATCH with Content-Range) and its pull of the same files."""
    oras_client = pytest.importorskip("oras.client")
    work = tmp_path / "work"
    work.mkdir()
    blob = work / "data.bin"
    blob.write_bytes(uuid.uuid4().bytes * 40_000)  # 640 kB in 64 kB chunks
    client = oras_client.OrasClient(hostname=registry.host, insecure=True)
    client.session.trust_env = False
    resp = client.push(
        target=f"{registry.host}/{repo}:chunked",
        files=[f"{blob}:application/vnd.berth.test.data"],
        do_chunked=True,
        chunk_size=64 * 1024,
        disable_path_validation=True,
        quiet=True,
    )
    assert resp.status_code == 201, resp.text
    out = tmp_path / "out"
    files = client.pull(target=f"{registry.host}/{repo}:chunked", outdir=str(out))
    assert [Path(f).name for f in files] == ["data.bin"]
    assert Path(files[0]).read_bytes() == blob.read_bytes()


def test_concurrent_pushes_through_two_replicas(
    tmp_path: Path, replica_pair: tuple[Server, Server], skopeo: Skopeo, repo: str
):
    """Four images sharing base layers, pushed at once, half through each replica."""
    a, b = replica_pair
    src = OCILayout(tmp_path / "src")
    base = src.add_image(layers=2, files_per_layer=20)
    base_layers = base.blobs[1:]
    images = [src.add_image(layers=1, base=base_layers) for _ in range(4)]
    for i, image in enumerate(images):
        src.tag(image.descriptor, f"t{i}")

    def push(i: int) -> None:
        server = (a, b)[i % 2]
        _push(skopeo, src, f"t{i}", server, f"{repo}:t{i}", "--preserve-digests")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(push, range(4)))

    for i, image in enumerate(images):
        for server in (a, b):
            raw = skopeo.inspect_raw(f"docker://{server.host}/{repo}:t{i}")
            assert raw == image.body, (server.host, i)
    dst = OCILayout(tmp_path / "dst")
    skopeo.copy(f"docker://{b.host}/{repo}:t0", f"oci:{dst.path}:t0", "--preserve-digests")
    for digest in closure(src, images[0].digest):
        assert dst.read_blob(digest) == src.read_blob(digest)


def test_berth_config_file_read_only(
    tmp_path: Path, berth_factory, distribution_factory, skopeo: Skopeo, repo: str
):
    """`berth serve --config FILE` with storage.read_only serves what Distribution wrote and
    refuses every write with 405 UNSUPPORTED."""
    if target_kind() != "berth":
        pytest.skip("berth's own configuration file")
    root = distribution_factory.new_root()
    dist = distribution_factory.start(root=root)
    try:
        src = OCILayout(tmp_path / "src")
        image = src.add_image(layers=1)
        src.tag(image.descriptor, "v1")
        _push(skopeo, src, "v1", dist, f"{repo}:v1", "--preserve-digests")
    finally:
        dist.stop()
    ro = berth_factory.start(root=root, config={"storage": {"read_only": True}})
    try:
        assert skopeo.inspect_raw(f"docker://{ro.host}/{repo}:v1") == image.body
        with ro.client() as c:
            r = c.post(f"/v2/{repo}/blobs/uploads/")
            assert r.status_code == 405, (r.status_code, r.text)
            assert r.json()["errors"][0]["code"] == "UNSUPPORTED"
            r = c.put(
                f"/v2/{repo}/manifests/v2",
                content=image.body,
                headers={"Content-Type": MT_MANIFEST},
            )
            assert r.status_code == 405, (r.status_code, r.text)
            r = c.delete(f"/v2/{repo}/manifests/{image.digest}")
            assert r.status_code == 405, (r.status_code, r.text)
            assert c.get("/healthz").status_code == 200
            assert c.get("/readyz").status_code == 200
    finally:
        ro.stop()


def test_ctr_pull_by_digest_and_nested_names(
    tmp_path: Path, registry: Server, skopeo: Skopeo, containerd: Containerd, repo: str
):
    """Pinned digests (as Deployments pin images) and names with dots, underscores and many
    path components, through skopeo and containerd."""
    src = OCILayout(tmp_path / "src")
    image = src.add_image(layers=1)
    src.tag(image.descriptor, "v1")
    name = f"{repo}/team.one/app_x__y-z/deep/er"
    tag = "V1.2.3_rc-1"
    _push(skopeo, src, "v1", registry, f"{name}:{tag}", "--preserve-digests")
    assert skopeo.inspect_raw(f"docker://{registry.host}/{name}:{tag}") == image.body
    ref = f"{registry.host}/{name}@{image.digest}"
    containerd.ctr("images", "pull", "--plain-http", "--platform", "linux/amd64", ref)
    out = containerd.ctr("images", "ls", "-q").stdout.split()
    assert ref in out
    with registry.client() as c:
        r = c.get(f"/v2/{name}/tags/list")
        assert r.status_code == 200
        assert r.json() == {"name": name, "tags": [tag]}


def test_zstd_layers(tmp_path: Path, registry: Server, skopeo: Skopeo, repo: str):
    """skopeo recompresses to zstd on push: the registry stores any layer media type as is."""
    src = OCILayout(tmp_path / "src")
    image = src.add_image(layers=2)
    src.tag(image.descriptor, "v1")
    _push(skopeo, src, "v1", registry, f"{repo}:zstd", "--dest-compress-format", "zstd")
    raw = skopeo.inspect_raw(f"docker://{registry.host}/{repo}:zstd")
    manifest = json.loads(raw)
    assert {la["mediaType"] for la in manifest["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    }
    dst = OCILayout(tmp_path / "dst")
    skopeo.copy(f"docker://{registry.host}/{repo}:zstd", f"oci:{dst.path}:z", "--preserve-digests")
    assert dst.resolve("z")["digest"] == sha256_digest(raw)
    for la in manifest["layers"]:
        assert sha256_digest(dst.read_blob(la["digest"])) == la["digest"]
