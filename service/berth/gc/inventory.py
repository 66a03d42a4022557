"""One pass over storage: every blob directory and every repository file, listed in parallel.

Listing is split by key prefix (``blobs/<alg>/<xx>/`` and each top-level repository directory)
and the prefixes are walked concurrently with ``driver.walk``, which on S3 is a paginated
``ListObjectsV2``: a few thousand keys per request, never one request per object.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from ..registry.digest import Digest
from ..registry.errors import DigestInvalid
from ..storage import paths
from ..storage.driver import ObjectInfo, PathNotFound, StorageDriver

LAYER, REVISION, TAG_CURRENT, TAG_INDEX, REFERRER = (
    "layer",
    "revision",
    "tag",
    "tag-index",
    "referrer",
)


@dataclass(slots=True)
class BlobEntry:
    digest: Digest
    data: ObjectInfo | None = None
    touched: float | None = None
    tombstones: dict[str, float] = field(default_factory=dict)  # file name -> modified


@dataclass(frozen=True, slots=True)
class Link:
    repo: str
    kind: str
    digest: Digest | None  # None for a tag's current link until it is read
    key: str
    modified: float
    tag: str | None = None
    subject: Digest | None = None


@dataclass(slots=True)
class Upload:
    repo: str
    upload_id: str
    started_key: str | None = None
    newest: float = 0.0
    objects: int = 0


@dataclass(slots=True)
class Inventory:
    blobs: dict[Digest, BlobEntry] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    uploads: dict[tuple[str, str], Upload] = field(default_factory=dict)
    objects: int = 0  # every object listed

    def repositories(self) -> set[str]:
        return {link.repo for link in self.links}


def _digest(algorithm: str, hex_: str) -> Digest | None:
    try:
        return Digest.parse(f"{algorithm}:{hex_}")
    except DigestInvalid:
        return None


def add_blob_object(inv: Inventory, info: ObjectInfo) -> None:
    rel = info.key[len(paths.BLOBS) + 1 :].split("/")
    if len(rel) != 4:
        return
    algorithm, _, hex_, name = rel
    digest = _digest(algorithm, hex_)
    if digest is None:
        return
    entry = inv.blobs.get(digest)
    if entry is None:
        entry = inv.blobs[digest] = BlobEntry(digest)
    if name == "data":
        entry.data = info
    elif name == "touch":
        entry.touched = info.modified
    elif name.startswith(paths.TOMBSTONE_PREFIX):
        entry.tombstones[name] = info.modified


def add_repository_object(inv: Inventory, info: ObjectInfo) -> None:
    parts = info.key[len(paths.REPOSITORIES) + 1 :].split("/")
    cut = next((i for i, p in enumerate(parts) if p.startswith("_")), None)
    if not cut:
        return
    repo, area, rest = "/".join(parts[:cut]), parts[cut], parts[cut + 1 :]
    if area == "_uploads":
        if not rest:
            return
        upload = inv.uploads.get((repo, rest[0]))
        if upload is None:
            upload = inv.uploads[(repo, rest[0])] = Upload(repo, rest[0])
        upload.objects += 1
        upload.newest = max(upload.newest, info.modified)
        if rest[1:] == ["startedat"]:
            upload.started_key = info.key
        return
    if not rest or rest[-1] != "link":
        return
    link: Link | None = None
    if area == "_layers" and len(rest) == 3:
        if d := _digest(rest[0], rest[1]):
            link = Link(repo, LAYER, d, info.key, info.modified)
    elif area == "_manifests" and rest[0] == "revisions" and len(rest) == 4:
        if d := _digest(rest[1], rest[2]):
            link = Link(repo, REVISION, d, info.key, info.modified)
    elif area == "_manifests" and rest[0] == "tags" and len(rest) == 4 and rest[2] == "current":
        link = Link(repo, TAG_CURRENT, None, info.key, info.modified, tag=rest[1])
    elif area == "_manifests" and rest[0] == "tags" and len(rest) == 6 and rest[2] == "index":
        if d := _digest(rest[3], rest[4]):
            link = Link(repo, TAG_INDEX, d, info.key, info.modified, tag=rest[1])
    elif area == "_manifests" and rest[0] == "referrers" and len(rest) == 6:
        subject, d = _digest(rest[1], rest[2]), _digest(rest[3], rest[4])
        if subject and d:
            link = Link(repo, REFERRER, d, info.key, info.modified, subject=subject)
    if link is not None:
        inv.links.append(link)


async def _prefixes(driver: StorageDriver, prefix: str, depth: int) -> list[str]:
    """Key prefixes ``depth`` directory levels below ``prefix`` (the units listed in parallel)."""
    level = [prefix]
    for _ in range(depth):
        found = await asyncio.gather(*(_children(driver, p) for p in level))
        level = [f"{p}/{c}" for p, children in zip(level, found, strict=True) for c in children]
    return level


async def _children(driver: StorageDriver, prefix: str) -> list[str]:
    try:
        return await driver.list(prefix)
    except PathNotFound:
        return []


async def take_inventory(
    driver: StorageDriver,
    concurrency: int = 16,
    on_objects: Callable[[int], None] | None = None,
) -> Inventory:
    inv = Inventory()
    blob_prefixes, repo_prefixes = await asyncio.gather(
        _prefixes(driver, paths.BLOBS, 2), _prefixes(driver, paths.REPOSITORIES, 1)
    )
    jobs = [(p, add_blob_object) for p in blob_prefixes]
    jobs += [(p, add_repository_object) for p in repo_prefixes]
    sem = asyncio.Semaphore(concurrency)

    async def walk(prefix: str, add: Callable[[Inventory, ObjectInfo], None]) -> None:
        async with sem:
            count = 0
            async for info in driver.walk(prefix):
                add(inv, info)
                count += 1
                if count % 1000 == 0 and on_objects:
                    on_objects(1000)
            inv.objects += count
            if on_objects:
                on_objects(count % 1000)

    await asyncio.gather(*(walk(p, add) for p, add in jobs))
    return inv
