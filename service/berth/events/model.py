"""A registry event, carrying what CNCF Distribution's events carry (plus referrer facts).

Nothing here knows HTTP frameworks: the API layer describes its request with ``Origin``.
"""

from __future__ import annotations

import datetime
import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

DISTRIBUTION_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
BLOB_MEDIA_TYPE = "application/octet-stream"  # what Distribution sends for blob targets

# The CloudEvents verb of each action.
VERBS = {
    "push": "pushed",
    "pull": "pulled",
    "mount": "mounted",
    "delete": "deleted",
    "fill": "filled",
}
KINDS = ("manifest", "blob", "tag")


@dataclass(frozen=True, slots=True)
class Origin:
    """Who caused an event and through which request (empty for GC and other jobs)."""

    actor: str = ""
    request_id: str = ""
    addr: str = ""
    host: str = ""
    method: str = ""
    useragent: str = ""
    base_url: str = ""  # scheme://host the registry was reached at, for target URLs


GC_ORIGIN = Origin(actor="gc")


@dataclass(frozen=True, slots=True)
class Target:
    repository: str
    media_type: str = ""
    digest: str = ""
    size: int | None = None
    tag: str = ""
    from_repository: str = ""  # mounts
    subject: str = ""  # referrers: the digest of the manifest they refer to
    artifact_type: str = ""


# One id per process, as Distribution's source.instanceID.
INSTANCE_ID = str(uuid.uuid4())


def _now() -> str:
    """RFC 3339 in UTC with a ``Z``, as Distribution writes it."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_SOURCE: tuple[int, str] = (0, "")


def _source_addr() -> str:
    """``host:pid``, worked out once per process (uvicorn workers are forked)."""
    global _SOURCE
    pid = os.getpid()
    if _SOURCE[0] != pid:
        _SOURCE = (pid, f"{socket.gethostname()}:{pid}")
    return _SOURCE[1]


@dataclass(frozen=True, slots=True)
class Event:
    action: str
    kind: str  # manifest, blob or tag (the CloudEvents type)
    target: Target
    origin: Origin
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    timestamp: str = field(default_factory=lambda: _now())
    source_addr: str = field(default_factory=_source_addr)
    instance_id: str = INSTANCE_ID
    only: tuple[str, ...] = ()  # a replayed dead letter: for these endpoints only

    @property
    def url(self) -> str:
        t = self.target
        if not self.origin.base_url or not t.digest:
            return ""
        area = "blobs" if self.kind == "blob" else "manifests"
        return f"{self.origin.base_url}/v2/{t.repository}/{area}/{t.digest}"

    def distribution(self) -> dict[str, Any]:
        """The event as Distribution's envelope carries it."""
        t = self.target
        target: dict[str, Any] = {"mediaType": t.media_type, "repository": t.repository}
        if t.digest:
            target["digest"] = t.digest
        if t.size is not None:
            target["size"] = t.size
            target["length"] = t.size
        if self.url:
            target["url"] = self.url
        if t.tag:
            target["tag"] = t.tag
        if t.from_repository:
            target["fromRepository"] = t.from_repository
        if t.subject:
            target["subject"] = t.subject
        if t.artifact_type:
            target["artifactType"] = t.artifact_type
        o = self.origin
        return {
            "id": self.id,
            "timestamp": self.timestamp,
            "action": self.action,
            "target": target,
            "request": {
                "id": o.request_id,
                "addr": o.addr,
                "host": o.host,
                "method": o.method,
                "useragent": o.useragent,
            },
            "actor": {"name": o.actor} if o.actor else {},
            "source": {"addr": self.source_addr, "instanceID": self.instance_id},
        }

    def record(self) -> dict[str, Any]:
        """The journal's form: everything needed to rebuild the event."""
        record = {"kind": self.kind, "baseURL": self.origin.base_url, **self.distribution()}
        if self.only:
            record["only"] = list(self.only)
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Event:
        t, r = record["target"], record.get("request") or {}
        return cls(
            action=record["action"],
            kind=record["kind"],
            target=Target(
                repository=t["repository"],
                media_type=t.get("mediaType", ""),
                digest=t.get("digest", ""),
                size=t.get("size"),
                tag=t.get("tag", ""),
                from_repository=t.get("fromRepository", ""),
                subject=t.get("subject", ""),
                artifact_type=t.get("artifactType", ""),
            ),
            origin=Origin(
                actor=(record.get("actor") or {}).get("name", ""),
                request_id=r.get("id", ""),
                addr=r.get("addr", ""),
                host=r.get("host", ""),
                method=r.get("method", ""),
                useragent=r.get("useragent", ""),
                base_url=record.get("baseURL", ""),
            ),
            id=record["id"],
            timestamp=record["timestamp"],
            source_addr=record["source"]["addr"],
            instance_id=record["source"]["instanceID"],
            only=tuple(record.get("only", ())),
        )


__all__ = ["GC_ORIGIN", "Event", "Origin", "Target"]
