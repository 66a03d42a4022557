"""The store floor: a workload's S3 requests, sent by Berth's own S3 client with no registry in
front (no HTTP server, no client upload, no digest, no logic), against the same SeaweedFS.

No registry that keeps Distribution's storage layout can beat it on this machine, so the floor
divided by Distribution's figure is the highest ratio any such registry could show in that row
(for a Python registry at least: a Go client costs the store's two cores less). Requests:

* manifest PUT: the four writes of the layout in the order crash consistency needs (the
  content; the revision link and the tag's index link together; the tag's link last), with no
  existence check or GC handshake.
* 64 MiB in one request: one multipart upload at the blob's key, all eight 8 MiB parts at
  once from memory, complete.
* 64 MiB in 8 MiB chunks: each chunk's part only once the previous one is stored (a client
  sends the next chunk after the answer, and a stateless registry answers only once the chunk
  is stored), complete, then the copy to the blob's key (the digest, hence the key, is known
  only at the end).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from typing import Any

from berth.config import S3Settings
from berth.storage.s3 import S3Driver

MiB = 1024 * 1024


class StoreFloor:
    def __init__(self, s3: dict[str, Any], concurrency: int) -> None:
        os.environ.pop("AWS_CA_BUNDLE", None)  # the store is plain HTTP here, as for the servers
        self.driver = S3Driver(S3Settings(**s3))
        self.concurrency = concurrency
        self.data = os.urandom(64 * MiB)

    async def __aenter__(self) -> StoreFloor:
        await self.driver.start()
        # A new bucket's first writes are slow on SeaweedFS (volumes being created): not part
        # of any floor.
        await self.manifest_put(count=100)
        await self.push_whole()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.driver.close()

    async def manifest_put(self, count: int = 300) -> float:
        d = self.driver
        body = os.urandom(1500)
        run = uuid.uuid4().hex[:8]
        sem = asyncio.Semaphore(self.concurrency)

        async def one(i: int) -> None:
            h = hashlib.sha256(f"{run}-{i}".encode()).hexdigest()
            link = f"sha256:{h}".encode()
            manifests, tag = "repositories/floor/_manifests", f"{run}-{i}"
            # In the order a crash-consistent registry needs on this layout (Distribution's
            # too): the content, then the revision and the tag's index entry, and the tag
            # last, so that a tag never names a manifest without its revision (GC roots).
            async with sem:
                await d.put(f"blobs/sha256/{h[:2]}/{h}/data", body)
                await asyncio.gather(
                    d.put(f"{manifests}/revisions/sha256/{h}/link", link),
                    d.put(f"{manifests}/tags/{tag}/index/sha256/{h}/link", link),
                )
                await d.put(f"{manifests}/tags/{tag}/current/link", link)

        t0 = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(count)))
        return count / (time.monotonic() - t0)

    async def _parts(self, key: str, serial: bool, part: int = 8 * MiB) -> None:
        t = self.driver.transport
        full = self.driver.full_key(key)
        upload = await t.create_upload(full, key)
        starts = range(0, len(self.data), part)

        async def send(n: int, start: int) -> str:
            return await t.upload_part(full, key, upload, n, part, self.data[start : start + part])

        if serial:
            etags = [await send(n, s) for n, s in enumerate(starts, start=1)]
        else:
            etags = list(await asyncio.gather(*(send(n, s) for n, s in enumerate(starts, 1))))
        await t.complete_upload(full, key, upload, etags)

    async def push_whole(self) -> float:
        t0 = time.monotonic()
        await self._parts(f"floor/{uuid.uuid4().hex}/data", serial=False)
        return 64 / (time.monotonic() - t0)

    async def push_chunked(self) -> float:
        session = f"floor/{uuid.uuid4().hex}"
        t0 = time.monotonic()
        await self._parts(f"{session}/data", serial=True)
        await self.driver.move(f"{session}/data", f"{session}/blob")
        return 64 / (time.monotonic() - t0)
