"""Mark: what every repository keeps, and the set of blobs those manifests need.

Roots per repository: the manifest each tag points at, every revision written within the grace
period, and, without ``delete_untagged``, every revision. From the roots: the children of an
index (recursively) and every manifest whose ``subject`` is kept (referrers: signatures, SBOMs),
found through the ``subject`` of each revision (so referrers pushed through Distribution count
too), and through the ``_manifests/referrers/`` index early Berth builds wrote. Each manifest
body is read once per run.

Absent content is not an error: a revision, tag target, index child or referrer whose data is
missing (deleted meanwhile, or never pushed: sparse indexes and images) has nothing to keep.
Present content that cannot be parsed is: GC cannot know what it references, so it is recorded
in ``MarkResult.unreadable`` (with every repository that names it) and the sweep fails safe
(``sweep.plan``). Every revision counts, kept or not, because an unreadable one may be a
referrer of a kept manifest; so do tag targets and index children, and tag links whose content
is not a digest.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from ..registry.digest import Digest
from ..registry.errors import DigestInvalid, ManifestInvalid
from ..registry.manifest import Manifest
from ..storage import paths
from ..storage.driver import PathNotFound, StorageDriver
from .inventory import REFERRER, REVISION, TAG_CURRENT, Inventory, Link
from .manifests import parse_for_marking


@dataclass(frozen=True, slots=True)
class Unreadable:
    """Present content GC needed to read and could not: a manifest, or a tag's current link."""

    repository: str
    digest: str  # the manifest's digest; for a tag link, what the link holds (may be junk)
    reason: str
    tag: str | None = None

    def __str__(self) -> str:
        what = f"tag {self.tag} link" if self.tag is not None else "manifest"
        return f"{self.repository}: {what} {self.digest}: {self.reason}"


@dataclass(slots=True)
class MarkResult:
    kept: dict[str, set[Digest]] = field(default_factory=dict)  # repo -> manifests kept there
    marked: set[Digest] = field(default_factory=set)  # blobs (manifests included) to keep
    tags: dict[str, dict[str, Digest]] = field(default_factory=dict)
    manifests_read: int = 0
    unreadable: list[Unreadable] = field(default_factory=list)
    evicted: set[Digest] = field(default_factory=set)  # cache blobs left unmarked on purpose

    @property
    def unreadable_repositories(self) -> set[str]:
        return {u.repository for u in self.unreadable}


class Marker:
    def __init__(
        self,
        driver: StorageDriver,
        inventory: Inventory,
        *,
        delete_untagged: bool,
        cutoff: float,
        concurrency: int = 32,
        on_read: Callable[[int], None] | None = None,
        proxied: Callable[[str], bool] | None = None,
        evict: Callable[[set[Digest]], set[Digest]] | None = None,
    ) -> None:
        """``proxied``/``evict``: pull-through eviction (evict.py): of the blobs only proxied
        repositories reference, ``evict`` chooses those left unmarked."""
        self.proxied = proxied
        self.evict = evict
        self.driver = driver
        self.inv = inventory
        self.delete_untagged = delete_untagged
        self.cutoff = cutoff
        self.sem = asyncio.Semaphore(concurrency)
        self.on_read = on_read
        self.manifests: dict[Digest, Manifest | None] = {}
        self.invalid: dict[Digest, str] = {}  # present, but not a manifest GC can read: why
        self.bad_tags: list[Unreadable] = []
        self.result = MarkResult()

    async def _read(self, digest: Digest) -> None:
        async with self.sem:
            try:
                body = await self.driver.get(paths.blob_data(digest))
            except PathNotFound:
                self.manifests[digest] = None
                return
        try:
            self.manifests[digest] = parse_for_marking(body)
        except ManifestInvalid as exc:
            # Present but unreadable: nothing to follow, and the sweep must not guess.
            self.manifests[digest] = None
            self.invalid[digest] = str(exc)
        self.result.manifests_read += 1
        if self.on_read:
            self.on_read(1)

    async def _read_all(self, digests: set[Digest]) -> None:
        todo = {d for d in digests if d not in self.manifests and self._exists(d)}
        for d in digests - todo:
            self.manifests.setdefault(d, None)
        await asyncio.gather(*(self._read(d) for d in todo))

    def _exists(self, digest: Digest) -> bool:
        entry = self.inv.blobs.get(digest)
        return entry is not None and entry.data is not None

    async def _resolve_tags(self, links: list[Link]) -> None:
        async def one(link: Link) -> None:
            async with self.sem:
                try:
                    raw = await self.driver.get(link.key)
                except PathNotFound:
                    return  # deleted meanwhile: it no longer roots anything
            try:
                digest = Digest.parse(raw.decode().strip())
            except (DigestInvalid, UnicodeDecodeError):
                # Which manifest the tag keeps is unknown: as unsafe as an unreadable manifest.
                assert link.tag is not None
                text = raw[:100].decode(errors="replace").strip()
                self.bad_tags.append(Unreadable(link.repo, text, "not a digest", tag=link.tag))
                return
            assert link.tag is not None
            self.result.tags.setdefault(link.repo, {})[link.tag] = digest

        await asyncio.gather(*(one(link) for link in links))

    async def run(self) -> MarkResult:
        revisions: dict[str, list[Link]] = defaultdict(list)
        referrer_index: dict[str, dict[Digest, set[Digest]]] = defaultdict(lambda: defaultdict(set))
        tag_links: list[Link] = []
        for link in self.inv.links:
            if link.kind == REVISION:
                revisions[link.repo].append(link)
            elif link.kind == REFERRER and link.subject is not None and link.digest is not None:
                referrer_index[link.repo][link.subject].add(link.digest)
            elif link.kind == TAG_CURRENT:
                tag_links.append(link)

        all_revisions = {link.digest for links in revisions.values() for link in links}
        await asyncio.gather(
            self._read_all({d for d in all_revisions if d is not None}),
            self._resolve_tags(tag_links),
        )

        repos = set(revisions) | set(self.result.tags)
        for repo in sorted(repos):
            roots: set[Digest] = set(self.result.tags.get(repo, {}).values())
            for link in revisions.get(repo, []):
                assert link.digest is not None
                if not self.delete_untagged or link.modified >= self.cutoff:
                    roots.add(link.digest)
            # Referrers by subject: Berth's index (entries whose revision still exists) plus
            # the subject of every revision.
            present = {d for link in revisions.get(repo, []) if (d := link.digest) is not None}
            by_subject: dict[Digest, set[Digest]] = defaultdict(set)
            for subject, referrers in referrer_index[repo].items():
                by_subject[subject] = {d for d in referrers if d in present}
            for link in revisions.get(repo, []):
                assert link.digest is not None
                m = self.manifests.get(link.digest)
                if m is not None and m.subject is not None:
                    by_subject[m.subject.digest].add(link.digest)
            self.result.kept[repo] = await self._closure(roots, by_subject)
            named = self.result.kept[repo] | present
            self.result.unreadable += [
                Unreadable(repo, str(d), self.invalid[d])
                for d in sorted(named & self.invalid.keys(), key=str)
            ]
        self.result.unreadable += sorted(self.bad_tags, key=str)

        marked = self.result.marked
        cache: set[Digest] = set()  # blobs of proxied repositories: evictable
        for repo, kept in self.result.kept.items():
            proxied = self.evict is not None and self.proxied is not None and self.proxied(repo)
            for digest in kept:
                marked.add(digest)
                m = self.manifests.get(digest)
                if m is None:
                    continue
                blobs = {d.digest for d in m.blob_references()}
                blobs.update(d.digest for d in m.layers)  # foreign layers too, if stored
                (cache if proxied else marked).update(blobs)
                marked.update(d.digest for d in m.manifests)
        if self.evict is not None:
            candidates = cache - marked
            self.result.evicted = self.evict(candidates)
            marked.update(candidates - self.result.evicted)
        return self.result

    async def _closure(
        self, roots: set[Digest], by_subject: dict[Digest, set[Digest]]
    ) -> set[Digest]:
        kept: set[Digest] = set()
        frontier = set(roots)
        while frontier:
            await self._read_all(frontier)  # children that are not revisions anywhere (rare)
            kept |= frontier
            nxt: set[Digest] = set()
            for digest in frontier:
                m = self.manifests.get(digest)
                if m is not None:
                    nxt.update(d.digest for d in m.manifests)
                nxt |= by_subject.get(digest, set())
            frontier = nxt - kept
        return kept
