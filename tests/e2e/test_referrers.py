"""OCI 1.1 referrers: an oras artifact with a ``subject`` is listed by the referrers API.

The oras CLI is not on PyPI or npm; the PyPI ``oras`` client (oras-py) pushes the artifact.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from .conftest import Server, Skopeo, push_blob, target_kind, within_staleness
from .ocilayout import MT_EMPTY, MT_INDEX, MT_MANIFEST, OCILayout, canonical_json, sha256_digest

pytestmark = pytest.mark.e2e

SBOM_TYPE = "application/vnd.berth.test.sbom.v1+json"
SIG_TYPE = "application/vnd.berth.test.signature.v1"


@pytest.fixture
def referrers_target(registry: Server) -> Server:
    if target_kind() == "distribution":
        pytest.skip("CNCF Distribution 2.8.2 has no referrers API (BERTH_E2E_TARGET=distribution)")
    return registry


def _push_image(tmp_path: Path, registry: Server, skopeo: Skopeo, repo: str):
    src = OCILayout(tmp_path / "src")
    image = src.add_image(layers=2)
    src.tag(image.descriptor, "v1")
    skopeo.copy(f"oci:{src.path}:v1", f"docker://{registry.host}/{repo}:v1", "--preserve-digests")
    return image


def _oras_push_sbom(tmp_path: Path, registry: Server, repo: str, image) -> dict:
    oras_client = pytest.importorskip("oras.client")
    import oras.oci

    work = tmp_path / "oras"
    work.mkdir()
    sbom = work / "sbom.json"
    sbom.write_text(json.dumps({"spdxVersion": "SPDX-2.3", "name": repo}))
    config = work / "config.json"
    config.write_text("{}")
    client = oras_client.OrasClient(hostname=registry.host, insecure=True)
    client.session.trust_env = False
    subject = oras.oci.Subject(mediaType=MT_MANIFEST, digest=image.digest, size=len(image.body))
    resp = client.push(
        target=f"{registry.host}/{repo}:sbom",
        files=[f"{sbom}:application/spdx+json"],
        manifest_config=f"{config}:{SBOM_TYPE}",
        subject=subject,
        disable_path_validation=True,
        quiet=True,
    )
    assert resp.status_code == 201, resp.text
    # A registry that processes `subject` says so (OCI distribution spec 1.1, "Pushing Manifests
    # with Subject").
    assert resp.headers.get("OCI-Subject") == image.digest, dict(resp.headers)
    return {"digest": resp.headers["Docker-Content-Digest"]}


def _push_signature(c: httpx.Client, repo: str, image) -> dict:
    """A second referrer, pushed by hand: explicit artifactType and the empty config."""
    empty = b"{}"
    push_blob(c, repo, empty)
    push_blob(c, repo, b"fake-signature-" + image.digest.encode())
    layer = b"fake-signature-" + image.digest.encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "artifactType": SIG_TYPE,
        "config": {"mediaType": MT_EMPTY, "digest": sha256_digest(empty), "size": 2},
        "layers": [
            {
                "mediaType": "application/octet-stream",
                "digest": sha256_digest(layer),
                "size": len(layer),
            }
        ],
        "subject": {"mediaType": MT_MANIFEST, "digest": image.digest, "size": len(image.body)},
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }
    body = canonical_json(manifest)
    digest = sha256_digest(body)
    r = c.put(f"/v2/{repo}/manifests/{digest}", content=body, headers={"Content-Type": MT_MANIFEST})
    assert r.status_code == 201, (r.status_code, r.text)
    assert r.headers.get("OCI-Subject") == image.digest
    return {"digest": digest, "size": len(body)}


def test_oras_artifact_listed_by_referrers(
    tmp_path: Path, referrers_target: Server, skopeo: Skopeo, repo: str
):
    registry = referrers_target
    image = _push_image(tmp_path, registry, skopeo, repo)
    sbom = _oras_push_sbom(tmp_path, registry, repo, image)

    with registry.client() as c:
        r = c.get(f"/v2/{repo}/manifests/sbom", headers={"Accept": MT_MANIFEST})
        assert r.status_code == 200
        sbom_manifest = r.json()
        assert sbom_manifest["subject"]["digest"] == image.digest
        sbom_size = len(r.content)

        sig = _push_signature(c, repo, image)

        r = c.get(f"/v2/{repo}/referrers/{image.digest}")
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"].split(";")[0] == MT_INDEX
        index = r.json()
        assert index["schemaVersion"] == 2
        assert index["mediaType"] == MT_INDEX
        by_digest = {m["digest"]: m for m in index["manifests"]}
        assert set(by_digest) == {sbom["digest"], sig["digest"]}, index
        # No artifactType in the oras manifest: the config's media type stands in for it.
        assert by_digest[sbom["digest"]]["artifactType"] == SBOM_TYPE
        assert by_digest[sbom["digest"]]["mediaType"] == MT_MANIFEST
        assert by_digest[sbom["digest"]]["size"] == sbom_size
        assert by_digest[sig["digest"]]["artifactType"] == SIG_TYPE
        assert by_digest[sig["digest"]]["size"] == sig["size"]
        assert by_digest[sig["digest"]]["annotations"] == {
            "org.opencontainers.image.created": "2024-01-01T00:00:00Z"
        }

        r = c.get(f"/v2/{repo}/referrers/{image.digest}", params={"artifactType": SBOM_TYPE})
        assert r.status_code == 200, r.text
        assert r.headers.get("OCI-Filters-Applied") == "artifactType"
        filtered = r.json()
        assert [m["digest"] for m in filtered["manifests"]] == [sbom["digest"]]
        assert filtered["manifests"][0]["artifactType"] == SBOM_TYPE

        r = c.get(f"/v2/{repo}/referrers/{image.digest}", params={"artifactType": SIG_TYPE})
        assert r.headers.get("OCI-Filters-Applied") == "artifactType"
        assert [m["digest"] for m in r.json()["manifests"]] == [sig["digest"]]

        # A digest nobody refers to: an empty index, not a 404.
        other = sha256_digest(b"nobody refers to this")
        r = c.get(f"/v2/{repo}/referrers/{other}")
        assert r.status_code == 200, r.text
        assert r.json()["manifests"] == []


def test_deleted_referrer_leaves_the_list(
    tmp_path: Path, referrers_target: Server, skopeo: Skopeo, repo: str
):
    """Deleting the referring artifact removes it from the referrers list."""
    registry = referrers_target
    image = _push_image(tmp_path, registry, skopeo, repo)
    sbom = _oras_push_sbom(tmp_path, registry, repo, image)
    with registry.client() as c:
        r = c.get(f"/v2/{repo}/referrers/{image.digest}")
        assert [m["digest"] for m in r.json()["manifests"]] == [sbom["digest"]]
        r = c.delete(f"/v2/{repo}/manifests/{sbom['digest']}")
        assert r.status_code == 202, r.text
        r = c.get(f"/v2/{repo}/referrers/{image.digest}")
        assert r.status_code == 200
        assert r.json()["manifests"] == []


def _referrer_manifest(c: httpx.Client, repo: str, subject: dict, artifact_type: str) -> bytes:
    empty = b"{}"
    push_blob(c, repo, empty)
    return canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": MT_EMPTY, "digest": sha256_digest(empty), "size": 2},
            "layers": [{"mediaType": MT_EMPTY, "digest": sha256_digest(empty), "size": 2}],
            "subject": subject,
        }
    )


def _referrer_digests(c: httpx.Client, repo: str, digest: str) -> set[str]:
    r = c.get(f"/v2/{repo}/referrers/{digest}")
    assert r.status_code == 200, (r.status_code, r.text)
    return {m["digest"] for m in r.json()["manifests"]}


def test_referrer_pushed_on_one_replica_listed_by_the_other(
    replica_pair: tuple[Server, Server], repo: str
):
    if target_kind() == "distribution":
        pytest.skip("CNCF Distribution 2.8.2 has no referrers API (BERTH_E2E_TARGET=distribution)")
    a, b = replica_pair
    subject = {"mediaType": MT_MANIFEST, "digest": sha256_digest(repo.encode()), "size": 100}
    with a.client() as ca, b.client() as cb:
        first = _referrer_manifest(ca, repo, subject, SBOM_TYPE)
        r = ca.put(
            f"/v2/{repo}/manifests/{sha256_digest(first)}",
            content=first,
            headers={"Content-Type": MT_MANIFEST},
        )
        assert r.status_code == 201, r.text
        # B answers (and may cache) the list, then A adds a second referrer.
        assert _referrer_digests(cb, repo, subject["digest"]) == {sha256_digest(first)}
        second = _referrer_manifest(ca, repo, subject, SIG_TYPE)
        r = ca.put(
            f"/v2/{repo}/manifests/{sha256_digest(second)}",
            content=second,
            headers={"Content-Type": MT_MANIFEST},
        )
        assert r.status_code == 201, r.text
        assert _referrer_digests(cb, repo, subject["digest"]) == {
            sha256_digest(first),
            sha256_digest(second),
        }
        # And a delete on B is seen by A.
        r = cb.delete(f"/v2/{repo}/manifests/{sha256_digest(first)}")
        assert r.status_code == 202, r.text
        assert _referrer_digests(ca, repo, subject["digest"]) == {sha256_digest(second)}


def test_referrer_pushed_before_its_subject(
    tmp_path: Path, referrers_target: Server, skopeo: Skopeo, repo: str
):
    """The spec lets a referrer arrive before its subject (copy tools push bottom-up or not)."""
    registry = referrers_target
    src = OCILayout(tmp_path / "src")
    image = src.add_image(layers=1)
    src.tag(image.descriptor, "v1")
    subject = {"mediaType": MT_MANIFEST, "digest": image.digest, "size": len(image.body)}
    with registry.client() as c:
        body = _referrer_manifest(c, repo, subject, SBOM_TYPE)
        r = c.put(
            f"/v2/{repo}/manifests/{sha256_digest(body)}",
            content=body,
            headers={"Content-Type": MT_MANIFEST},
        )
        assert r.status_code == 201, r.text
        assert r.headers.get("OCI-Subject") == image.digest
        skopeo.copy(
            f"oci:{src.path}:v1", f"docker://{registry.host}/{repo}:v1", "--preserve-digests"
        )
        assert _referrer_digests(c, repo, image.digest) == {sha256_digest(body)}


def test_referrer_written_by_distribution_listed_by_berth(
    shared_pair: tuple[Server, Server], repo: str
):
    """An artifact with `subject` pushed through Distribution 2.8.2 (which stores it as a plain
    manifest) onto the shared directory is found by the referrers API of the registry under
    test: the directory is served as it is."""
    if target_kind() == "distribution":
        pytest.skip("CNCF Distribution 2.8.2 has no referrers API (BERTH_E2E_TARGET=distribution)")
    berth, dist = shared_pair
    subject = {"mediaType": MT_MANIFEST, "digest": sha256_digest(repo.encode()), "size": 10}
    with dist.client() as cd, berth.client() as cb:
        body = _referrer_manifest(cd, repo, subject, SBOM_TYPE)
        r = cd.put(
            f"/v2/{repo}/manifests/{sha256_digest(body)}",
            content=body,
            headers={"Content-Type": MT_MANIFEST},
        )
        assert r.status_code == 201, r.text
        assert _referrer_digests(cb, repo, subject["digest"]) == {sha256_digest(body)}


def test_referrer_deleted_by_distribution_leaves_berth_list(
    shared_pair: tuple[Server, Server], repo: str
):
    """A referrer pushed through the registry under test, then deleted through Distribution
    2.8.2 on the shared directory, is no longer listed (nor served) within the staleness bound."""
    if target_kind() == "distribution":
        pytest.skip("CNCF Distribution 2.8.2 has no referrers API (BERTH_E2E_TARGET=distribution)")
    berth, dist = shared_pair
    subject = {"mediaType": MT_MANIFEST, "digest": sha256_digest(repo.encode()), "size": 10}
    with dist.client() as cd, berth.client() as cb:
        body = _referrer_manifest(cb, repo, subject, SBOM_TYPE)
        digest = sha256_digest(body)
        r = cb.put(
            f"/v2/{repo}/manifests/{digest}", content=body, headers={"Content-Type": MT_MANIFEST}
        )
        assert r.status_code == 201, r.text
        assert _referrer_digests(cb, repo, subject["digest"]) == {digest}
        r = cd.delete(f"/v2/{repo}/manifests/{digest}")
        assert r.status_code == 202, r.text
        # Berth trusts the revision link it saw for cache.link_staleness_seconds at most.
        within_staleness(
            lambda: (
                _referrer_digests(cb, repo, subject["digest"]) == set()
                and cb.get(f"/v2/{repo}/manifests/{digest}").status_code == 404
            )
        )
