"""Knowing, without a request, that no garbage collection is removing blobs.

A writer that relies on a blob (a manifest PUT, a mount, a finished upload) writes its mark
(``touch``, or the content itself) and then lists the blob's directory for GC tombstones
(docs/gc.md). Every GC run holds the ``gc`` lease from before its first tombstone until its
last delete, and waits ``cache.gc_lease_staleness_seconds`` (W) after writing the lease before
it writes any tombstone. Say a look at the lease, sent at time q, found none and *completed*
before the writer sent the first request its reservation relies on (the mark's write, or an
earlier read of the blob), and the mark's write completed before q + W. A GC that had the lease
before the look had released it, so its deletes were all done before that first request; a GC
that took it after q writes no tombstone before q + W, after the mark was in place, so its
re-check after its tombstone sees the mark, exactly as when the writer lists and finds nothing.
The listing is then skipped. (A look completed only after the mark was sent proves nothing: a
GC could have removed the blob, then released the lease, while the mark was in flight.)

Looks are lazy: a writer that finds the last look too old starts one (at most one in flight)
and lists as before; so an idle replica sends nothing, and a busy one about one GET per W/2.
A lease record that cannot be read or parsed counts as a running GC. A record past its expiry
(plus slack for the GC host's clock) is a GC that died: ignored.
"""

from __future__ import annotations

import json
import logging
import time

from ..singleflight import SingleFlight
from ..storage import paths
from ..storage.driver import PathNotFound, StorageDriver

log = logging.getLogger("berth.registry")

GC_LEASE = "gc"  # berth.gc.run takes the lease under this name
# A GC host's clock may be this far ahead of ours when we compare its lease's expiry.
EXPIRY_SLACK_SECONDS = 60.0


def lease_active(raw: bytes, now: float) -> bool:
    """Whether a GC lease record may belong to a run that is still removing blobs."""
    try:
        expires = json.loads(raw).get("expires")
    except (ValueError, AttributeError):
        return True
    if not isinstance(expires, int | float):
        return True
    return expires + EXPIRY_SLACK_SECONDS > now


class GCQuiet:
    def __init__(self, driver: StorageDriver, window: float) -> None:
        self.driver = driver
        self.window = window
        # Monotonic send and completion times of the last look, if it found no GC.
        self._quiet_sent: float | None = None
        self._quiet_done = 0.0
        self._looks: SingleFlight[str, None] = SingleFlight()
        self.skipped = 0  # listings skipped (for tests and debugging)

    def covers(self, since: float, completed: float) -> bool:
        """Whether a reservation needs no tombstone listing: its first request (the mark's
        write, or an earlier read it relies on) was sent at the monotonic time ``since``, and
        the mark's write completed at ``completed``. Starts a look when the last one is
        getting old."""
        if self.window <= 0:
            return False
        sent = self._quiet_sent
        if sent is None or completed - sent >= self.window:
            self._refresh()
            return False
        if self._quiet_done > since:
            return False  # that look completed only after the writer began: list
        if time.monotonic() - sent >= self.window / 2:
            self._refresh()  # keep a busy replica's view fresh before it runs out
        self.skipped += 1
        return True

    def predicts(self, since: float) -> bool:
        """Whether ``covers`` will very likely hold for a reservation whose first request is
        sent now, at ``since``: a writer may then send what must follow its mark (a link read
        or write) alongside it, since no GC can remove anything before both complete. Only
        ``covers``, checked once they have, decides."""
        sent = self._quiet_sent
        return (
            self.window > 0
            and sent is not None
            and self._quiet_done <= since
            and since - sent < self.window / 2
        )

    def _refresh(self) -> None:
        self._looks.start("lease", self.look)  # not awaited: the writer lists meanwhile

    async def look(self) -> None:
        """Read the GC lease once and remember what it says."""
        sent = time.monotonic()
        try:
            raw = await self.driver.get(paths.lease(GC_LEASE))
        except PathNotFound:
            raw = None
        except Exception as exc:  # the next writer lists, and looks again
            log.debug("gc lease look failed: %s", exc)
            self._quiet_sent = None
            return
        if raw is not None and lease_active(raw, time.time()):
            self._quiet_sent = None
        else:
            self._quiet_sent, self._quiet_done = sent, time.monotonic()
