"""The one place that maps registry objects to storage keys.

It reproduces CNCF Distribution's layout exactly, so a directory or bucket written by
Distribution is served as it is, and Distribution reads what Berth writes::

    docker/registry/v2/blobs/<alg>/<hex[:2]>/<hex>/data
    docker/registry/v2/repositories/<name>/_layers/<alg>/<hex>/link
    docker/registry/v2/repositories/<name>/_manifests/revisions/<alg>/<hex>/link
    docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/current/link
    docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/index/<alg>/<hex>/link
    docker/registry/v2/repositories/<name>/_uploads/<id>/{data,startedat,hashstates/<alg>/<off>}

Every argument has been validated (names.py, digest.py, upload ids) before it reaches here.
The drivers never use this module: keys are opaque to them. It lives beside them because it
*is* the storage format, shared by the registry, GC and tools; it needs nothing from the
registry layer but a digest's two parts.
"""

from __future__ import annotations

from typing import Protocol


class Digest(Protocol):
    """What a key needs of a digest (``berth.registry.digest.Digest`` is one)."""

    @property
    def algorithm(self) -> str: ...

    @property
    def hex(self) -> str: ...


ROOT = "docker/registry/v2"
BLOBS = f"{ROOT}/blobs"
REPOSITORIES = f"{ROOT}/repositories"
BLOB_DATA = "data"  # the content's file name inside a blob directory


def blob_dir(digest: Digest) -> str:
    return f"{BLOBS}/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"


def blob_data(digest: Digest) -> str:
    return f"{blob_dir(digest)}/{BLOB_DATA}"


def repository(name: str) -> str:
    return f"{REPOSITORIES}/{name}"


def layer_link(name: str, digest: Digest) -> str:
    return f"{REPOSITORIES}/{name}/_layers/{digest.algorithm}/{digest.hex}/link"


def manifests(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_manifests"


def revision_link(name: str, digest: Digest) -> str:
    return f"{manifests(name)}/revisions/{digest.algorithm}/{digest.hex}/link"


def revisions(name: str, algorithm: str) -> str:
    return f"{manifests(name)}/revisions/{algorithm}"


def tags(name: str) -> str:
    return f"{manifests(name)}/tags"


def tag_dir(name: str, tag: str) -> str:
    return f"{tags(name)}/{tag}"


def tag_current_link(name: str, tag: str) -> str:
    return f"{tag_dir(name, tag)}/current/link"


def tag_index_link(name: str, tag: str, digest: Digest) -> str:
    return f"{tag_dir(name, tag)}/index/{digest.algorithm}/{digest.hex}/link"


def uploads(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_uploads"


def upload_dir(name: str, upload_id: str) -> str:
    return f"{uploads(name)}/{upload_id}"


def upload_data(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/data"


def upload_started_at(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/startedat"


def upload_hashstates(name: str, upload_id: str, algorithm: str) -> str:
    return f"{upload_dir(name, upload_id)}/hashstates/{algorithm}"


def upload_hashstate(name: str, upload_id: str, algorithm: str, offset: int) -> str:
    return f"{upload_hashstates(name, upload_id, algorithm)}/{offset}"


# -- garbage collection (see docs/gc.md): files Distribution ignores (it only reads ``data``) --

BERTH_STATE = f"{ROOT}/_berth"
TOMBSTONE_PREFIX = "gc-"


def blob_touch(digest: Digest) -> str:
    """Rewritten by every write that starts relying on the blob (manifest PUT, mount, upload)."""
    return f"{blob_dir(digest)}/touch"


def blob_tombstone(digest: Digest, run_id: str) -> str:
    """Written by a GC run just before it re-checks and deletes the blob or links to it."""
    return f"{blob_dir(digest)}/{TOMBSTONE_PREFIX}{run_id}"


def lease(name: str) -> str:
    return f"{BERTH_STATE}/leases/{name}"


# -- registry events (see docs/events.md): a journal of batches and each endpoint's state --

EVENTS = f"{BERTH_STATE}/events"
EVENT_JOURNAL = f"{EVENTS}/journal"


def event_batch(key: str) -> str:
    return f"{EVENT_JOURNAL}/{key}"


def event_endpoint(endpoint: str) -> str:
    return f"{EVENTS}/endpoints/{endpoint}"


def event_claims(endpoint: str) -> str:
    return f"{event_endpoint(endpoint)}/claims"


def event_claim(endpoint: str, generation: int) -> str:
    return f"{event_claims(endpoint)}/{generation:012d}"


def event_progress(endpoint: str) -> str:
    return f"{event_endpoint(endpoint)}/delivered"


def dead_letters(endpoint: str) -> str:
    return f"{event_endpoint(endpoint)}/dead"


def dead_letter(endpoint: str, event_id: str) -> str:
    return f"{dead_letters(endpoint)}/{event_id}"


ACCESS_ROOT = f"{BERTH_STATE}/access"


def blob_access(digest: Digest) -> str:
    """Rewritten (its modification time is what counts) when a proxied blob is used."""
    return f"{ACCESS_ROOT}/{digest.algorithm}/{digest.hex}"


def fill_claim(digest: Digest) -> str:
    """Held (created exclusively) by the replica fetching a blob from a pull-through upstream."""
    return f"{BERTH_STATE}/fills/{digest.algorithm}/{digest.hex}"
