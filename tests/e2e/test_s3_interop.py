"""CNCF Distribution 2.8.2 (its S3 driver) and Berth on the SAME SeaweedFS bucket and root
directory: an image pushed through either one is pulled through the other, byte for byte.

Distribution's S3 driver panics when ``AWS_CA_BUNDLE`` is set (these machines set it), so its
process runs without it; Berth's runs with the variable as the machine has it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import s3_servers

from .conftest import DistributionFactory, Server, Skopeo
from .ocilayout import OCILayout, closure
from .test_s3_replicas import berth_s3_config

pytestmark = pytest.mark.e2e
ROOT = "registry-root"


class S3DistributionFactory(DistributionFactory):
    """Distribution 2.8.2 with its S3 driver on one bucket (config in ``self.s3``)."""

    s3: dict[str, object]

    def storage_driver(self, root: Path) -> dict[str, object]:
        return {"s3": self.s3}


def distribution_s3_settings(weed: s3_servers.S3Server, bucket: str) -> dict[str, object]:
    return {
        "accesskey": weed.access_key,
        "secretkey": weed.secret_key,
        "region": weed.region,
        "regionendpoint": weed.endpoint,
        "bucket": bucket,
        "rootdirectory": f"/{ROOT}",
        "secure": False,
        "v4auth": True,
        "chunksize": 5 * 1024 * 1024,
    }


@pytest.fixture(scope="module")
def pair(berth_factory, e2e_workdir: Path) -> Iterator[tuple[Server, Server]]:
    weed = s3_servers.require_seaweedfs()
    bucket = s3_servers.new_bucket(weed)
    factory = S3DistributionFactory(e2e_workdir)
    factory.s3 = distribution_s3_settings(weed, bucket)
    try:
        dist = factory.start()
        berth = berth_factory.start(config=berth_s3_config(weed, bucket, root_directory=ROOT))
        yield berth, dist
        berth.stop()
    finally:
        factory.stop_all()
        weed.stop()


def _round_trip(skopeo: Skopeo, tmp: Path, push_to: Server, pull_from: Server, repo: str) -> None:
    src = OCILayout(tmp / "src")
    image = src.add_image(layers=3, files_per_layer=3)
    src.tag(image.descriptor, "v1")
    skopeo.copy(f"oci:{src.path}:v1", f"docker://{push_to.host}/{repo}:v1", "--preserve-digests")
    remote = f"docker://{pull_from.host}/{repo}:v1"
    assert skopeo.inspect_raw(remote) == image.body
    dst = OCILayout(tmp / "dst")
    skopeo.copy(remote, f"oci:{dst.path}:back", "--preserve-digests")
    for digest in closure(src, image.digest):
        assert dst.read_blob(digest) == src.read_blob(digest), digest
    with pull_from.client() as c:
        tags = c.get(f"/v2/{repo}/tags/list").json()["tags"]
        assert tags == ["v1"]


def test_distribution_pushes_berth_pulls(pair, skopeo: Skopeo, tmp_path: Path, repo: str) -> None:
    berth, dist = pair
    _round_trip(skopeo, tmp_path, dist, berth, repo)


def test_berth_pushes_distribution_pulls(pair, skopeo: Skopeo, tmp_path: Path, repo: str) -> None:
    berth, dist = pair
    _round_trip(skopeo, tmp_path, berth, dist, repo)
