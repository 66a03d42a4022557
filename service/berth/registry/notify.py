"""The events each registry operation records (through the events recorder).

Only built when endpoints are configured (``Registry.events`` is None otherwise, and every
caller checks that first, so recording costs nothing then).
"""

from __future__ import annotations

from ..events.model import BLOB_MEDIA_TYPE, GC_ORIGIN, Event, Origin, Target
from ..events.recorder import Recorder
from .digest import Digest
from .manifest import Manifest

# What an event says of its cause when the caller has no request to describe.
NO_ORIGIN = Origin()


class Notifier:
    """``origin``: the request that caused the event; None when there is none to describe."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def wants(self, action: str) -> bool:
        return self.recorder.wants(action)

    @staticmethod
    def _manifest_target(
        name: str, digest: Digest, size: int | None, manifest: Manifest, tag: str = ""
    ) -> Target:
        subject = manifest.subject
        # For a referrer, what the referrers API reports (a scanner tells signatures from
        # SBOMs by it); for anything else, only an explicit artifactType.
        kind = manifest.referrer_artifact_type() if subject else manifest.artifact_type
        return Target(
            repository=name,
            media_type=manifest.media_type,
            digest=str(digest),
            size=size,
            tag=tag,
            subject=str(subject.digest) if subject is not None else "",
            artifact_type=kind or "",
        )

    async def manifest(
        self,
        action: str,
        name: str,
        digest: Digest,
        size: int,
        manifest: Manifest,
        tags: list[str],
        origin: Origin | None,
    ) -> None:
        """A manifest pushed or pulled (one event per tag it was pushed or pulled by)."""
        if not self.wants(action):
            return
        await self.recorder.record(
            [
                Event(
                    action,
                    "manifest",
                    self._manifest_target(name, digest, size, manifest, t),
                    origin or NO_ORIGIN,
                )
                for t in (tags or [""])
            ]
        )

    async def manifest_deleted(
        self, name: str, digest: Digest, manifest: Manifest | None, origin: Origin | None
    ) -> None:
        if not self.wants("delete"):
            return
        if manifest is not None:
            target = self._manifest_target(name, digest, None, manifest)
        else:
            target = Target(name, digest=str(digest))
        await self.recorder.record([Event("delete", "manifest", target, origin or NO_ORIGIN)])

    async def tag_deleted(
        self, name: str, tag: str, digest: Digest | None, origin: Origin | None
    ) -> None:
        if not self.wants("delete"):
            return
        target = Target(name, digest=str(digest) if digest else "", tag=tag)
        await self.recorder.record([Event("delete", "tag", target, origin or NO_ORIGIN)])

    async def blob(
        self,
        action: str,
        name: str,
        digest: Digest,
        size: int | None,
        origin: Origin | None,
        source: str | None = None,
    ) -> None:
        """A blob pushed, mounted (from ``source``) or deleted."""
        if not self.wants(action):
            return
        target = Target(name, BLOB_MEDIA_TYPE, str(digest), size=size, from_repository=source or "")
        await self.recorder.record([Event(action, "blob", target, origin or NO_ORIGIN)])

    async def deleted_by_gc(
        self, manifests: list[tuple[str, Digest]], blobs: list[tuple[str, Digest]]
    ) -> None:
        """What a garbage collection removed: manifest revisions and blob links, actor gc."""
        if not self.wants("delete"):
            return
        events = [
            Event("delete", "manifest", Target(r, digest=str(d)), GC_ORIGIN) for r, d in manifests
        ]
        events += [
            Event("delete", "blob", Target(r, BLOB_MEDIA_TYPE, str(d)), GC_ORIGIN) for r, d in blobs
        ]
        for start in range(0, len(events), GC_EVENTS_PER_BATCH):
            await self.recorder.record(events[start : start + GC_EVENTS_PER_BATCH])


GC_EVENTS_PER_BATCH = 1000  # a journal batch stays a small object

__all__ = ["Notifier"]
