"""Presence of links, remembered for a bounded time (``cache.link_staleness_seconds``).

Whether a repository links a blob or a manifest revision can change (a DELETE, a GC run), so
unlike content it may only be cached within a staleness bound: a delete is seen at once by the
replica that made it (it forgets the entry) and by every other replica within the bound.
Distribution's in-memory descriptor cache has no bound at all. Only presence is remembered,
never absence: a blob pushed through one replica is found at once through any other.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable


class PresenceCache:
    """Keys seen present, each trusted for ``ttl`` seconds; at most ``capacity`` of them."""

    def __init__(self, ttl: float, capacity: int) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self._seen: OrderedDict[Hashable, float] = OrderedDict()  # key -> monotonic deadline

    def fresh(self, key: Hashable) -> bool:
        deadline = self._seen.get(key)
        if deadline is None:
            return False
        if deadline < time.monotonic():
            del self._seen[key]
            return False
        return True

    def remember(self, key: Hashable) -> None:
        if self.ttl <= 0 or self.capacity <= 0:
            return
        self._seen[key] = time.monotonic() + self.ttl
        self._seen.move_to_end(key)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)

    def forget(self, key: Hashable) -> None:
        self._seen.pop(key, None)

    def __len__(self) -> int:
        return len(self._seen)
