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
"""

from __future__ import annotations

import mmap
import os
import time
from collections import OrderedDict
from collections.abc import Hashable

GENERATION_ENV = "BERTH_INTERNAL_CACHE_GENERATION_FILE"


class Generation:
    """A counter bumped by every delete; in-process unless backed by a shared file."""

    def __init__(self, path: str | None = None) -> None:
        self._local = 0
        self._map: mmap.mmap | None = None
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


class PresenceCache:
    """Keys seen present, each trusted for ``ttl`` seconds and while no delete happened in this
    replica since; at most ``capacity`` of them."""

    def __init__(self, ttl: float, capacity: int, generation: Generation | None = None) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self.generation = generation or Generation()
        # key -> (monotonic time the read or write that saw it was sent, generation then)
        self._seen: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()

    def fresh(self, key: Hashable, since: float = float("-inf")) -> bool:
        """Seen present within the bound (by a request sent at or after the monotonic time
        ``since``, when given)."""
        entry = self._seen.get(key)
        if entry is None:
            return False
        if entry[0] + self.ttl < time.monotonic() or entry[1] != self.generation.value():
            del self._seen[key]
            return False
        return entry[0] >= since

    def remember(self, key: Hashable, sent: float | None = None) -> None:
        """``key`` is present, as seen by a request sent at ``sent`` (monotonic; default now):
        trusted for ``ttl`` from then."""
        if self.ttl <= 0 or self.capacity <= 0:
            return
        when = time.monotonic() if sent is None else sent
        self._seen[key] = (when, self.generation.value())
        self._seen.move_to_end(key)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)

    def discard(self, key: Hashable) -> None:
        """Storage says ``key`` is absent: stop trusting it here (no delete happened here)."""
        self._seen.pop(key, None)

    def forget(self, key: Hashable) -> None:
        """A delete of ``key``: gone here at once, and for every worker of this replica."""
        self._seen.pop(key, None)
        self.generation.bump()

    def __len__(self) -> int:
        return len(self._seen)
