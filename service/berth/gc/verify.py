"""Check storage invariants: every tag and revision resolves to a manifest whose blobs exist.

Used by the tests (before and after GC, and during concurrent pushes) and handy for operators:
a manifest that points at a missing blob is exactly what garbage collection must never cause.
"""

from __future__ import annotations

from ..registry.digest import Digest
from ..registry.errors import DigestInvalid, ManifestInvalid
from ..storage import paths
from ..storage.driver import PathNotFound, StorageDriver
from .inventory import LAYER, REVISION, TAG_CURRENT, take_inventory
from .manifests import parse_for_marking


async def find_problems(driver: StorageDriver) -> list[str]:
    inv = await take_inventory(driver)
    present = {d for d, e in inv.blobs.items() if e.data is not None}
    revisions: dict[str, set[Digest]] = {}
    layers: dict[str, set[Digest]] = {}
    roots: list[tuple[str, Digest, str]] = []
    for link in inv.links:
        if link.kind == REVISION and link.digest is not None:
            revisions.setdefault(link.repo, set()).add(link.digest)
            roots.append((link.repo, link.digest, "revision"))
        elif link.kind == LAYER and link.digest is not None:
            layers.setdefault(link.repo, set()).add(link.digest)
    problems: list[str] = []
    for link in inv.links:
        if link.kind != TAG_CURRENT:
            continue
        try:
            digest = Digest.parse((await driver.get(link.key)).decode().strip())
        except (PathNotFound, DigestInvalid):
            continue  # moved or deleted meanwhile
        roots.append((link.repo, digest, f"tag {link.tag}"))
        if digest not in revisions.get(link.repo, set()):
            problems.append(f"{link.repo}: tag {link.tag} -> {digest} has no revision link")
    seen: set[tuple[str, Digest]] = set()
    for repo, digest, why in roots:
        if (repo, digest) in seen:
            continue
        seen.add((repo, digest))
        if digest not in present:
            problems.append(f"{repo}: {why} {digest}: manifest data missing")
            continue
        try:
            manifest = parse_for_marking(await driver.get(paths.blob_data(digest)))
        except (PathNotFound, ManifestInvalid) as exc:
            problems.append(f"{repo}: {why} {digest}: unreadable ({exc})")
            continue
        for desc in manifest.blob_references():
            if desc.digest not in present:
                problems.append(f"{repo}: {digest} needs blob {desc.digest}: missing")
            elif desc.digest not in layers.get(repo, set()):
                problems.append(f"{repo}: {digest} needs blob {desc.digest}: not linked")
        for child in manifest.manifests:
            if child.digest not in present:
                problems.append(f"{repo}: index {digest} needs {child.digest}: missing")
            elif child.digest not in revisions.get(repo, set()):
                problems.append(f"{repo}: index {digest} needs {child.digest}: no revision")
    return problems
