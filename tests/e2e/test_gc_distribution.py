"""`berth gc` (the real CLI, while `berth serve` runs) over a directory, then CNCF Distribution
2.8.2 on the same directory: it serves everything kept, and its own
`garbage-collect --dry-run` finds nothing Berth should have removed."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from .conftest import (
    BerthFactory,
    DistributionFactory,
    Server,
    Skopeo,
    free_port,
    push_blob,
    require_tool,
    run,
)
from .ocilayout import OCILayout, closure

pytestmark = pytest.mark.e2e
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SUMMARY = re.compile(r"(\d+) blobs marked, (\d+) blobs and (\d+) manifests eligible for deletion")


def _age(root: Path, seconds: float = 7200) -> None:
    then = time.time() - seconds
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            os.utime(os.path.join(dirpath, f), (then, then))


def _berth_gc(root: Path, *flags: str) -> dict:
    exe = require_tool("berth")
    proc = run([exe, "gc", "--storage-root", str(root), "--json", *flags], timeout=120)
    return json.loads(proc.stdout)


def _distribution_gc(config: Path, *flags: str) -> tuple[tuple[int, int, int], str]:
    exe = require_tool("docker-registry")
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    proc = subprocess.run(
        [exe, "garbage-collect", "--dry-run", *flags, str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    match = SUMMARY.search(out)
    assert match, out[-3000:]
    marked, blobs, manifests = (int(g) for g in match.groups())
    return (marked, blobs, manifests), out


def _push_referrer(c: httpx.Client, repo: str, subject: dict) -> tuple[str, set[str]]:
    empty = push_blob(c, repo, b"{}")
    payload = b"a signature for " + subject["digest"].encode()
    layer = push_blob(c, repo, payload)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.signature",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": empty,
                "size": 2,
            },
            "layers": [
                {"mediaType": "application/octet-stream", "digest": layer, "size": len(payload)}
            ],
            "subject": {k: subject[k] for k in ("mediaType", "digest", "size")},
        }
    ).encode()
    r = c.put(f"/v2/{repo}/manifests/sig", content=body, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201, r.text
    digest = r.headers["Docker-Content-Digest"]
    r = c.delete(f"/v2/{repo}/manifests/sig")  # untagged: kept only through its subject
    assert r.status_code == 202, r.text
    return digest, {digest, empty, layer}


def _pull(skopeo: Skopeo, src: OCILayout, server: Server, ref: str, root: str, dst: Path, *fl):
    out = OCILayout(dst)
    skopeo.copy(f"docker://{server.host}/{ref}", f"oci:{out.path}:back", "--preserve-digests", *fl)
    assert out.resolve("back")["digest"] == root
    for digest in closure(src, root):
        assert out.read_blob(digest) == src.read_blob(digest), digest


def test_berth_gc_then_distribution_serves_and_finds_nothing_to_remove(
    tmp_path: Path,
    berth_factory: BerthFactory,
    distribution_factory: DistributionFactory,
    skopeo: Skopeo,
    repo: str,
) -> None:
    root = distribution_factory.new_root()
    berth = berth_factory.start(root=root)
    src = OCILayout(tmp_path / "src")
    image = src.add_image(layers=2)
    src.tag(image.descriptor, "v1")
    index = src.add_platform_index(layers=1)
    src.tag(index.descriptor, "multi")
    gone = src.add_image(layers=2)
    src.tag(gone.descriptor, "gone")
    for tag, flags in (("v1", ()), ("multi", ("--all",)), ("gone", ())):
        skopeo.copy(
            f"oci:{src.path}:{tag}",
            f"docker://{berth.host}/{repo}:{tag}",
            "--preserve-digests",
            *flags,
        )
    with berth.client() as c:
        sig, sig_blobs = _push_referrer(c, repo, image.descriptor)
        orphan = push_blob(c, repo, b"nobody uses this blob " + repo.encode())
        assert c.delete(f"/v2/{repo}/manifests/{gone.digest}").status_code == 202
    _age(root)

    # 1. Default mode (every revision kept), online: the server keeps running.
    report = _berth_gc(root, "--grace-period", "0s")
    assert report["ok"], report["errors"]
    gone_blobs = closure(src, gone.digest)
    assert report["blobs_deleted"] == len(gone_blobs) + 1  # + the orphan
    (_, eligible_blobs, _), out = _distribution_gc(
        distribution_factory.write_config(root, free_port())
    )
    assert eligible_blobs == 0, out[-3000:]

    dist = distribution_factory.start(root=root)
    try:
        _pull(skopeo, src, dist, f"{repo}:v1", image.digest, tmp_path / "a")
        _pull(skopeo, src, dist, f"{repo}:multi", index.digest, tmp_path / "b", "--all")
        with dist.client() as c:
            r = c.get(f"/v2/{repo}/manifests/{sig}", headers={"Accept": OCI_MANIFEST})
            assert r.status_code == 200
            assert c.head(f"/v2/{repo}/blobs/{orphan}").status_code == 404
            for d in gone_blobs:
                assert c.head(f"/v2/{repo}/blobs/{d}").status_code == 404

        # 2. --delete-untagged: Distribution's own -m would also drop the untagged index
        #    children and the referrer; everything else it would remove, Berth already did.
        report = _berth_gc(root, "--grace-period", "0s", "--delete-untagged")
        assert report["ok"], report["errors"]
        (_, eligible_blobs, eligible_manifests), out = _distribution_gc(
            distribution_factory.write_config(root, free_port()), "--delete-untagged"
        )
        children = {m.digest for m in index.children}
        named = set(re.findall(r"manifest eligible for deletion: .*?(sha256:[0-9a-f]{64})", out))
        assert named <= children | {sig}, out[-3000:]
        blobs_named = set(re.findall(r"blob eligible for deletion: .*?(sha256:[0-9a-f]{64})", out))
        # Distribution 2.8.2 -m does not follow an index into untagged children (its known
        # bug): it would delete their layers and configs too. Berth keeps them on purpose.
        kept_on_purpose = set(sig_blobs)
        for child in children:
            kept_on_purpose |= closure(src, child)
        assert blobs_named <= kept_on_purpose, out[-3000:]
        assert eligible_blobs == len(blobs_named) and eligible_manifests >= len(named)
        _pull(skopeo, src, dist, f"{repo}:multi", index.digest, tmp_path / "c", "--all")
        with berth.client() as c:
            r = c.get(f"/v2/{repo}/referrers/{image.digest}")
            assert [m["digest"] for m in r.json()["manifests"]] == [sig]
    finally:
        dist.stop()
        berth.stop()


# -- Docker schema 1 as Distribution stores it, and manifests nobody can read --------------------


def _write(root: Path, rel: str, data: bytes) -> None:
    path = root / "docker/registry/v2" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _put_blob(root: Path, repo: str, data: bytes) -> str:
    hex_ = hashlib.sha256(data).hexdigest()
    _write(root, f"blobs/sha256/{hex_[:2]}/{hex_}/data", data)
    _write(root, f"repositories/{repo}/_layers/sha256/{hex_}/link", f"sha256:{hex_}".encode())
    return f"sha256:{hex_}"


def _put_manifest(root: Path, repo: str, body: bytes, tag: str) -> str:
    hex_ = hashlib.sha256(body).hexdigest()
    link = f"sha256:{hex_}".encode()
    _write(root, f"blobs/sha256/{hex_[:2]}/{hex_}/data", body)
    _write(root, f"repositories/{repo}/_manifests/revisions/sha256/{hex_}/link", link)
    _write(root, f"repositories/{repo}/_manifests/tags/{tag}/current/link", link)
    _write(root, f"repositories/{repo}/_manifests/tags/{tag}/index/sha256/{hex_}/link", link)
    return f"sha256:{hex_}"


def _blob_exists(root: Path, digest: str) -> bool:
    hex_ = digest.split(":", 1)[1]
    return (root / f"docker/registry/v2/blobs/sha256/{hex_[:2]}/{hex_}/data").exists()


def test_berth_gc_reads_schema1_and_fails_safe_on_unreadable_manifests(
    distribution_factory: DistributionFactory, repo: str
) -> None:
    """A schema 1 image in a Distribution directory (stored the way Distribution stores it: the
    canonical payload, unsigned; it signs on the way out): `berth gc` keeps its layers and
    Distribution's own GC agrees. Then a tagged manifest no parser can read: `berth gc` removes
    no blob at all, names it, and exits 1."""
    root = distribution_factory.new_root()
    layers = [_put_blob(root, repo, f"schema 1 layer {i} ".encode() * 50) for i in range(2)]
    schema1 = json.dumps(
        {
            "schemaVersion": 1,
            "name": repo,
            "tag": "old",
            "architecture": "amd64",
            "fsLayers": [{"blobSum": d} for d in reversed(layers)],
            "history": [{"v1Compatibility": json.dumps({"id": f"{i:064x}"})} for i in (1, 0)],
        },
        indent=3,
    ).encode()
    manifest = _put_manifest(root, repo, schema1, "old")
    orphan = _put_blob(root, repo, b"nothing names this blob")
    _age(root)

    report = _berth_gc(root, "--grace-period", "0s", "--delete-untagged")
    assert report["ok"], report["errors"]
    assert report["unreadable"] == []
    assert report["blobs_deleted"] == 1 and not _blob_exists(root, orphan)
    for digest in [manifest, *layers]:
        assert _blob_exists(root, digest), digest
    (marked, eligible_blobs, eligible_manifests), out = _distribution_gc(
        distribution_factory.write_config(root, free_port()), "--delete-untagged"
    )
    assert (marked, eligible_blobs, eligible_manifests) == (3, 0, 0), out[-3000:]

    # A tagged manifest in another repository that nothing can parse, over a layer of its own.
    junk_repo = f"{repo}-junk"
    junk_layer = _put_blob(root, junk_repo, b"only the unreadable manifest names this " * 20)
    junk = _put_manifest(
        root,
        junk_repo,
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.example.future.v9+json",
                "layers": [{"mediaType": "x", "digest": junk_layer, "size": 820}],
            }
        ).encode(),
        "v1",
    )
    orphan = _put_blob(root, repo, b"another blob nothing names")
    _age(root)
    proc = run(
        [
            require_tool("berth"),
            "gc",
            "--storage-root",
            str(root),
            "--json",
            "--grace-period",
            "0s",
            "--delete-untagged",
        ],
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert not report["ok"] and report["blob_sweep_skipped"]
    assert [(u["repository"], u["digest"]) for u in report["unreadable"]] == [(junk_repo, junk)]
    assert report["objects_removed"] == 0
    for digest in [junk, junk_layer, orphan, manifest, *layers]:
        assert _blob_exists(root, digest), digest
