"""An endpoint's delivery claim: one replica at a time delivers an endpoint's events.

Claims are numbered objects ``…/claims/<generation>`` written with the driver's conditional
``create``: of replicas that find the newest claim expired, only one creates the next
generation. The holder renews its own object; it has lost the claim once a newer generation
exists. A claim is never deleted while it is the newest (releasing marks it expired), so a
generation number is never reused. Delivery is at-least-once: a holder that stops renewing
(killed, or stalled past the ttl) is replaced, and what it sent since its last saved progress
is sent again.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from typing import Any

from ..storage import paths
from ..storage.driver import AlreadyExists, PathNotFound, StorageDriver


class Claim:
    def __init__(self, driver: StorageDriver, endpoint: str, ttl: float) -> None:
        self.driver = driver
        self.endpoint = endpoint
        self.ttl = ttl
        self.holder = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.generation: int | None = None
        self._renewed = 0.0  # monotonic time of the last successful create or renewal

    def _record(self, expires: float) -> bytes:
        return json.dumps({"holder": self.holder, "expires": expires}).encode()

    async def _generations(self) -> list[int]:
        try:
            names = await self.driver.list(paths.event_claims(self.endpoint))
        except PathNotFound:
            return []
        return sorted(int(n) for n in names if n.isascii() and n.isdigit())

    async def _read(self, generation: int) -> dict[str, Any] | None:
        try:
            record = json.loads(await self.driver.get(paths.event_claim(self.endpoint, generation)))
        except (PathNotFound, ValueError):
            return None
        return record if isinstance(record, dict) else None

    async def hold(self) -> bool:
        """True while this process holds the claim (renewed every third of the ttl)."""
        if self.generation is not None and time.monotonic() - self._renewed < self.ttl / 3:
            return True
        generations = await self._generations()
        if self.generation is not None:
            if not generations or generations[-1] != self.generation:
                self.generation = None  # another replica took over
                return False
            await self.driver.put(
                paths.event_claim(self.endpoint, self.generation),
                self._record(time.time() + self.ttl),
            )
            self._renewed = time.monotonic()
            return True
        following = 0
        if generations:
            latest = await self._read(generations[-1])
            expires = latest.get("expires") if latest else 0
            if isinstance(expires, int | float) and expires > time.time():
                return False
            following = generations[-1] + 1
        started = time.monotonic()
        try:
            await self.driver.create(
                paths.event_claim(self.endpoint, following), self._record(time.time() + self.ttl)
            )
        except AlreadyExists:
            return False
        self.generation, self._renewed = following, started
        stale = [paths.event_claim(self.endpoint, g) for g in generations]
        await self.driver.delete_many(stale, prune=False)
        return True

    async def release(self) -> None:
        """Let another replica take over at once (the object stays: see the module doc)."""
        if self.generation is None:
            return
        generation, self.generation = self.generation, None
        generations = await self._generations()
        if generations and generations[-1] == generation:
            await self.driver.put(paths.event_claim(self.endpoint, generation), self._record(0))


__all__ = ["Claim"]
