"""Presence of links, remembered for a bounded time (``cache.link_staleness_seconds``).

Whether a repository links a blob or a manifest revision can change (a DELETE, a GC run), so
unlike content it may only be cached within a staleness bound: a delete is seen at once by the
replica that made it (it forgets the entry) and by every other replica within the bound.
Distribution's in-memory descriptor cache has no bound at all. Only presence is remembered,
never absence: a blob pushed through one replica is found at once through any other.

A replica may be several worker processes (``http.workers``): they share a *generation*, a
counter in a small memory-mapped file that every delete increments, and an entry remembered
under an older generation is not trusted. So a delete is seen at once by every worker of the
replica that made it, for the price of reading eight bytes per lookup.

They share the entries too (``SharedPresence``, in the same file): a link one worker read or
wrote is trusted by the others within the same bound (and a blob's data, with its size), so a
replica reads a link once however many workers it runs (a pull's redirects spread over all of
them).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
import time
import zlib
from collections import OrderedDict

GENERATION_ENV = "BERTH_INTERNAL_CACHE_GENERATION_FILE"


class Generation:
    """A counter bumped by every delete; in-process unless backed by a shared file."""

    def __init__(self, path: str | None = None) -> None:
        self._local = 0
        self._map: mmap.mmap | None = None
        self.path = path or None
        if path:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < 8:
                    os.ftruncate(fd, 8)
                self._map = mmap.mmap(fd, 8)
            finally:
                os.close(fd)

    @classmethod
    def from_environment(cls) -> Generation:
        return cls(os.environ.get(GENERATION_ENV))

    def value(self) -> int:
        if self._map is None:
            return self._local
        return int.from_bytes(self._map[:8], "little")

    def bump(self) -> None:
        # Two concurrent bumps may yield one increment: the value still changes, which is all
        # a reader compares.
        if self._map is None:
            self._local += 1
        else:
            self._map[:8] = ((self.value() + 1) % 2**64).to_bytes(8, "little")


# A shared entry: key hash, monotonic send time of the request that saw the key present,
# generation then, value (a blob's size; -1: none), and a checksum of those. Writers do not
# lock: a slot read while another process writes it fails its checksum and counts as empty.
_SLOT = struct.Struct("<QdQqI4x")
_PAYLOAD = struct.Struct("<QdQq")
TABLE_OFFSET = mmap.PAGESIZE  # the generation's page comes first
# (monotonic time the read or write that saw the key present was sent, generation then, value)
Entry = tuple[float, int, int]


def key_hash(key: str) -> int:
    """The same in every process (``hash()`` is not); never 0, which marks an empty slot."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") or 1


class SharedPresence:
    """Presence entries every worker of a server reads and writes, in the generation's file.

    Direct-mapped: a key's slot is fixed by its hash, and a newer key overwrites an older one
    there (a lost entry costs one storage read, nothing else). Monotonic clocks agree between
    processes of one machine, so a worker trusts another's entry exactly as its own.
    """

    def __init__(self, path: str, capacity: int) -> None:
        slots = 1024
        while slots < capacity:
            slots *= 2
        self._mask = slots - 1
        size = TABLE_OFFSET + slots * _SLOT.size
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)  # every worker asks for the same size
            self._map = mmap.mmap(fd, slots * _SLOT.size, offset=TABLE_OFFSET)
        finally:
            os.close(fd)

    def get(self, key: str) -> Entry | None:
        """(send time, generation, value) of ``key``'s entry, if its slot holds one."""
        h = key_hash(key)
        at = (h & self._mask) * _SLOT.size
        stored, sent, generation, value, check = _SLOT.unpack_from(self._map, at)
        if stored != h or check != zlib.crc32(_PAYLOAD.pack(stored, sent, generation, value)):
            return None
        return sent, generation, value

    def put(self, key: str, sent: float, generation: int, value: int) -> None:
        h = key_hash(key)
        payload = _PAYLOAD.pack(h, sent, generation, value)
        _SLOT.pack_into(
            self._map,
            (h & self._mask) * _SLOT.size,
            h,
            sent,
            generation,
            value,
            zlib.crc32(payload),
        )

    def drop(self, key: str) -> None:
        h = key_hash(key)
        at = (h & self._mask) * _SLOT.size
        if _SLOT.unpack_from(self._map, at)[0] == h:
            self._map[at : at + _SLOT.size] = bytes(_SLOT.size)


class PresenceCache:
    """Keys seen present, each trusted for ``ttl`` seconds and while no delete happened in this
    replica since; at most ``capacity`` of them in this process, and as many in the table the
    replica's workers share (when the generation is shared), each with an optional value."""

    def __init__(self, ttl: float, capacity: int, generation: Generation | None = None) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self.generation = generation or Generation()
        self._seen: OrderedDict[str, Entry] = OrderedDict()
        self._shared: SharedPresence | None = None
        if self.generation.path and ttl > 0 and capacity > 0:
            self._shared = SharedPresence(self.generation.path, capacity)

    def _entry(self, key: str) -> Entry | None:
        """The key's entry while trusted: this process's, else one another worker wrote (then
        copied here, so that the next lookup is as cheap as for our own)."""
        now, generation = time.monotonic(), self.generation.value()
        entry = self._seen.get(key)
        if entry is not None:
            if entry[0] + self.ttl >= now and entry[1] == generation:
                return entry
            del self._seen[key]
        if self._shared is None:
            return None
        entry = self._shared.get(key)
        if entry is None or entry[0] + self.ttl < now or entry[1] != generation:
            return None
        self._keep(key, entry)
        return entry

    def fresh(self, key: str, since: float = float("-inf")) -> bool:
        """Seen present within the bound (by a request sent at or after the monotonic time
        ``since``, when given), by this process or another worker."""
        entry = self._entry(key)
        if entry is not None and entry[0] < since and self._shared is not None:
            # Ours is older than asked: another worker may have seen it since.
            shared = self._shared.get(key)
            entry = shared if shared is not None and shared[1] == entry[1] else entry
        return entry is not None and entry[0] >= since

    def value(self, key: str) -> int | None:
        """The value remembered with ``key`` while it is trusted (a blob's size), else None."""
        entry = self._entry(key)
        return None if entry is None or entry[2] < 0 else entry[2]

    def _keep(self, key: str, entry: Entry) -> None:
        self._seen[key] = entry
        self._seen.move_to_end(key)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)

    def remember(self, key: str, sent: float | None = None, value: int | None = None) -> None:
        """``key`` is present, as seen by a request sent at ``sent`` (monotonic; default now):
        trusted for ``ttl`` from then, with ``value`` (a blob's size) if given."""
        if self.ttl <= 0 or self.capacity <= 0:
            return
        when = time.monotonic() if sent is None else sent
        entry = (when, self.generation.value(), -1 if value is None else value)
        self._keep(key, entry)
        if self._shared is not None:
            self._shared.put(key, *entry)

    def share(self, key: str, sent: float, value: int) -> None:
        """Tell the other workers only (the caller keeps its own copy) that ``key`` is
        present with ``value``, as seen by a request sent at ``sent``."""
        if self._shared is not None and self.ttl > 0:
            self._shared.put(key, sent, self.generation.value(), value)

    def discard(self, key: str) -> None:
        """Storage says ``key`` is absent: stop trusting it here (no delete happened here)."""
        self._seen.pop(key, None)
        if self._shared is not None:
            self._shared.drop(key)

    def forget(self, key: str) -> None:
        """A delete of ``key``: gone here at once, and for every worker of this replica."""
        self.discard(key)
        self.generation.bump()

    def __len__(self) -> int:
        return len(self._seen)
