"""In-process caches for content addressed by digest, which never changes once written.

Manifest bodies are bounded by bytes, blob sizes by entries. Tags are never cached: a tag can
move at any time on any replica, and every replica must see the move at once.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """A least-recently-used map bounded by the total ``weight`` of its values."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._weights: dict[K, int] = {}
        self._data: OrderedDict[K, V] = OrderedDict()
        self._total = 0

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V, weight: int = 1) -> None:
        if weight > self.capacity:
            return
        self.discard(key)
        self._data[key] = value
        self._weights[key] = weight
        self._total += weight
        while self._total > self.capacity:
            old, _ = self._data.popitem(last=False)
            self._total -= self._weights.pop(old)

    def discard(self, key: K) -> None:
        if key in self._data:
            del self._data[key]
            self._total -= self._weights.pop(key)

    def __len__(self) -> int:
        return len(self._data)
