"""A small writer of OCI image layouts (``oci:`` directories that skopeo, umoci and ctr read).

Every image is made here from random bytes, so the e2e tests never download one:

    layout = OCILayout(tmp_path / "img")
    image = layout.add_image(layers=3)                       # one linux/amd64 image
    layout.tag(image.descriptor, "v1")                       # skopeo: oci:<dir>:v1
    index = layout.add_index([layout.add_image(arch="amd64"), layout.add_image(arch="arm64")])
    layout.tag(index.descriptor, "multi")

Layers are gzip-compressed tar archives of a few small files; the config has ``architecture``,
``os`` and ``rootfs.diff_ids`` (the sha256 of each *uncompressed* layer), as the image spec asks.
Output is deterministic for a given ``random.Random`` seed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_EMPTY = "application/vnd.oci.empty.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """Stable JSON bytes: the digest of a manifest is the digest of exactly these bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    desc: dict[str, Any] = {
        "mediaType": media_type,
        "digest": sha256_digest(data),
        "size": len(data),
    }
    desc.update({k: v for k, v in extra.items() if v is not None})
    return desc


def random_layer(rng: random.Random, files: int = 3, max_size: int = 4096) -> tuple[bytes, str]:
    """A gzip'd tar of ``files`` random files; returns (compressed bytes, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirname = f"data-{rng.getrandbits(32):08x}"
        info = tarfile.TarInfo(dirname)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        info.mtime = 1_700_000_000
        tar.addfile(info)
        for i in range(files):
            payload = rng.randbytes(rng.randint(1, max_size))
            info = tarfile.TarInfo(f"{dirname}/file-{i}.bin")
            info.size = len(payload)
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(payload))
    uncompressed = raw.getvalue()
    compressed = gzip.compress(uncompressed, compresslevel=6, mtime=0)
    return compressed, sha256_digest(uncompressed)


@dataclass
class Written:
    """Something written to the layout: its descriptor and the exact bytes behind it."""

    descriptor: dict[str, Any]
    body: bytes
    children: list[Written] = field(default_factory=list)
    blobs: list[dict[str, Any]] = field(default_factory=list)  # config + layers of a manifest

    @property
    def digest(self) -> str:
        return self.descriptor["digest"]


class OCILayout:
    """An OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/sha256/…``)."""

    def __init__(self, path: Path | str, rng: random.Random | None = None) -> None:
        self.path = Path(path)
        self.rng = rng or random.Random()
        self.diff_ids: dict[str, str] = {}  # layer digest -> diff_id, for layers written here
        (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        if not (self.path / "index.json").exists():
            self._write_index({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": []})

    # -- blobs ---------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        algo, hexpart = digest.split(":", 1)
        return self.path / "blobs" / algo / hexpart

    def add_blob(self, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        desc = descriptor(media_type, data, **extra)
        self.blob_path(desc["digest"]).write_bytes(data)
        return desc

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    # -- images --------------------------------------------------------------------------------
    def add_image(
        self,
        layers: int = 3,
        arch: str = "amd64",
        os: str = "linux",
        variant: str | None = None,
        files_per_layer: int = 3,
        annotations: dict[str, str] | None = None,
        base: list[dict[str, Any]] | None = None,
    ) -> Written:
        """Write a multi-layer image (layers, config, manifest); returns the manifest.

        ``base``: layer descriptors already written here, put below the new random layers
        (images that share layers, as images built from one base do).
        """
        layer_descs = list(base or [])
        diff_ids = [self.diff_ids[d["digest"]] for d in layer_descs]
        for _ in range(layers):
            data, diff_id = random_layer(self.rng, files=files_per_layer)
            layer_descs.append(self.add_blob(data, MT_LAYER_GZIP))
            self.diff_ids[layer_descs[-1]["digest"]] = diff_id
            diff_ids.append(diff_id)
        config: dict[str, Any] = {
            "created": "2024-01-01T00:00:00Z",
            "architecture": arch,
            "os": os,
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/sh"],
                "Labels": {"berth.test/nonce": f"{self.rng.getrandbits(64):016x}"},
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "ocilayout.py"}]
            * len(layer_descs),
        }
        if variant:
            config["variant"] = variant
        config_desc = self.add_blob(canonical_json(config), MT_CONFIG)
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": config_desc,
            "layers": layer_descs,
        }
        if annotations:
            manifest["annotations"] = annotations
        body = canonical_json(manifest)
        platform: dict[str, str] = {"architecture": arch, "os": os}
        if variant:
            platform["variant"] = variant
        desc = self.add_blob(body, MT_MANIFEST, platform=platform)
        return Written(desc, body, blobs=[config_desc, *layer_descs])

    def add_index(self, manifests: list[Written], annotations: dict[str, str] | None = None):
        """Write an image index over already-written manifests (each with its platform)."""
        index: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MT_INDEX,
            "manifests": [m.descriptor for m in manifests],
        }
        if annotations:
            index["annotations"] = annotations
        body = canonical_json(index)
        desc = self.add_blob(body, MT_INDEX)
        return Written(desc, body, children=list(manifests))

    def add_platform_index(
        self, platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64"), layers: int = 2
    ) -> Written:
        images = []
        for plat in platforms:
            os_name, arch, *variant = plat.split("/")
            images.append(
                self.add_image(
                    layers=layers, arch=arch, os=os_name, variant=variant[0] if variant else None
                )
            )
        return self.add_index(images)

    # -- index.json ----------------------------------------------------------------------------
    def _read_index(self) -> dict[str, Any]:
        return json.loads((self.path / "index.json").read_text())

    def _write_index(self, index: dict[str, Any]) -> None:
        (self.path / "index.json").write_text(json.dumps(index, indent=2))

    def tag(self, desc: dict[str, Any], ref: str) -> None:
        """Name ``desc`` as ``ref`` in index.json (what ``oci:<dir>:<ref>`` resolves)."""
        index = self._read_index()
        index["manifests"] = [
            m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) != ref
        ]
        entry = {k: v for k, v in desc.items() if k != "platform"}
        entry["annotations"] = {REF_NAME: ref}
        index["manifests"].append(entry)
        self._write_index(index)

    def resolve(self, ref: str) -> dict[str, Any]:
        """The descriptor that index.json names ``ref``."""
        for m in self._read_index()["manifests"]:
            if m.get("annotations", {}).get(REF_NAME) == ref:
                return m
        raise KeyError(f"{ref!r} not in {self.path / 'index.json'}")

    def manifest_json(self, digest: str) -> dict[str, Any]:
        return json.loads(self.read_blob(digest))

    def verify(self) -> list[str]:
        """Every blob's content matches its file name; returns the list of verified digests."""
        checked = []
        for blob in (self.path / "blobs" / "sha256").iterdir():
            got = hashlib.sha256(blob.read_bytes()).hexdigest()
            assert got == blob.name, f"blob {blob} has content digest sha256:{got}"
            checked.append("sha256:" + blob.name)
        return checked


def closure(layout: OCILayout, digest: str) -> set[str]:
    """Every digest reachable from ``digest`` (index → manifests → config + layers)."""
    seen: set[str] = set()
    todo = [digest]
    while todo:
        d = todo.pop()
        if d in seen:
            continue
        seen.add(d)
        try:
            doc = json.loads(layout.read_blob(d))
        except ValueError:  # a layer (gzip bytes), not JSON
            continue
        if not isinstance(doc, dict):
            continue
        if "manifests" in doc:
            todo.extend(m["digest"] for m in doc["manifests"])
        if "config" in doc and "layers" in doc:
            todo.append(doc["config"]["digest"])
            todo.extend(layer["digest"] for layer in doc["layers"])
    return seen
