"""The ``s3`` storage driver (aiobotocore): Distribution's key layout in a bucket.

Single-object requests, listings, copies, presigning and multipart uploads go through one
``S3Transport`` (``transport``), chosen in ``start()``: the lean client (``fastpath``) or
botocore (``botocore_transport``).

The aiobotocore client (one per process: a connection pool sized for the concurrency,
path-style addressing, standard retries with backoff and jitter, no payload hashing or extra
checksums, as the registry verifies every digest itself) serves the botocore transport, and
with the lean client only ranged reads, multipart copies and the listing of multipart uploads:
then it is created when first needed (``botocore()``), since loading its service model costs
each worker about 11 MiB. A second client, which never opens a connection, signs redirect URLs
for a public endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError

from ...config import S3Settings
from ..driver import (
    AlreadyExists,
    FileWriter,
    ObjectInfo,
    PathNotFound,
    StorageDriver,
    WriterBusy,
)
from .botocore_transport import BotocoreTransport, retry_more
from .errors import NOT_FOUND_CODES, call, classify, error_code, http_status, translate
from .fastpath import FastS3, Frozen
from .transport import CopyTooLarge, ListPage, S3Transport
from .writer import STATE_SUFFIX, PartBudget, S3Writer, WriterState, is_internal

READ_CHUNK = 1024 * 1024
Keys = list[str]  # (inside the class, ``list`` is the driver method)
COPY_PART = 1024**3
READ_RESUMES = 3


def _tune_malloc() -> None:
    """Return part-sized buffers to the OS when they are freed.

    glibc raises its mmap threshold after large frees (up to 32 MiB), after which multi-MiB
    part buffers come from (fragmenting) heap arenas, one per thread that ever allocated, and
    RSS only grows. A fixed 256 KiB threshold and two arenas keep it bounded.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc


class S3Driver(StorageDriver):
    name = "s3"

    def __init__(self, settings: S3Settings, session: AioSession | None = None) -> None:
        if not settings.bucket:
            raise ValueError("storage.s3.bucket is required for the s3 driver")
        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = settings.root_directory.strip("/")
        self._session = session
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._client_lock = asyncio.Lock()
        self._transport: S3Transport | None = None
        args: dict[str, Any] = {}
        if settings.storage_class:
            args["StorageClass"] = settings.storage_class
        if settings.sse:
            args["ServerSideEncryption"] = settings.sse
            if settings.sse_kms_key_id:
                args["SSEKMSKeyId"] = settings.sse_kms_key_id
        self.object_args = args
        # Pipelined part uploads (writer.py): per writer, and per process (one driver each).
        self.parts_in_flight = settings.parts_in_flight
        self.part_budget = PartBudget(settings.part_buffer_budget * 1024 * 1024)
        self.claim_seconds = settings.upload_claim_seconds

    # -- clients ---------------------------------------------------------------------------------

    def _config(self, pool: int) -> AioConfig:
        s = self.settings
        return AioConfig(
            region_name=s.region,
            signature_version="s3v4",
            max_pool_connections=pool,
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            # Attempts in all (botocore's ``max_attempts`` counts retries): as the lean client.
            retries={"total_max_attempts": s.max_attempts, "mode": "standard"},
            s3={
                "addressing_style": "path" if s.path_style else "virtual",
                # UNSIGNED-PAYLOAD: no SHA-256 over each body; digests are verified upstream.
                "payload_signing_enabled": False,
            },
            # No CRC32 on every request and response (botocore >= 1.36 default).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            tcp_keepalive=True,
        )

    def _client_args(self, endpoint: str | None) -> dict[str, Any]:
        s = self.settings
        args: dict[str, Any] = {"region_name": s.region, "endpoint_url": endpoint}
        if s.access_key_id and s.secret_access_key:
            args["aws_access_key_id"] = s.access_key_id
            args["aws_secret_access_key"] = s.secret_access_key
        if not s.verify_tls:
            args["verify"] = False
        elif s.ca_bundle:
            args["verify"] = s.ca_bundle
        return args

    async def start(self) -> None:
        if self._transport is not None:
            return
        _tune_malloc()
        session = self._session or get_session()
        if self.settings.profile:
            session.set_config_variable("profile", self.settings.profile)
        self._session = session
        self._stack = contextlib.AsyncExitStack()
        s = self.settings
        if s.fast_path and s.endpoint_url and s.path_style:
            credentials = await self._credentials(session)
            if credentials is not None:
                put_headers = {
                    {
                        "StorageClass": "x-amz-storage-class",
                        "ServerSideEncryption": "x-amz-server-side-encryption",
                        "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id",
                    }[k]: v
                    for k, v in self.object_args.items()
                }
                self._transport = FastS3(s, credentials, put_headers)
                return
        client = await self.botocore()
        public = s.public_endpoint_url or s.endpoint_url
        signer = client
        if public != s.endpoint_url:
            signer = await self._stack.enter_async_context(
                session.create_client("s3", config=self._config(1), **self._client_args(public))
            )
        self._transport = BotocoreTransport(client, signer, self.bucket, self.object_args)

    async def _credentials(self, session: AioSession) -> Callable[[], Awaitable[Frozen]] | None:
        """What signs the lean client's requests: the configured keys, else botocore's chain
        (refreshed as botocore does); None without credentials (botocore's transport then)."""
        s = self.settings
        if s.access_key_id and s.secret_access_key:
            static = Frozen(s.access_key_id, s.secret_access_key, None)

            async def fixed() -> Frozen:
                return static

            return fixed
        chain = await session.get_credentials()
        if chain is None:
            return None

        async def refreshed() -> Frozen:
            frozen = await chain.get_frozen_credentials()
            return Frozen(frozen.access_key, frozen.secret_key, frozen.token)

        return refreshed

    async def botocore(self) -> Any:
        """The aiobotocore client, created at the first call."""
        if self._client is not None:
            return self._client
        if self._stack is None or self._session is None:
            raise RuntimeError("S3Driver.start() was not called")
        async with self._client_lock:
            if self._client is None:
                s = self.settings
                client = await self._stack.enter_async_context(
                    self._session.create_client(
                        "s3",
                        config=self._config(s.max_pool_connections),
                        **self._client_args(s.endpoint_url),
                    )
                )
                retry_more(client, s.max_attempts)
                self._client = client
        return self._client

    @property
    def client(self) -> Any:
        """The aiobotocore client once ``botocore()`` created it (tests reach the store with it)."""
        if self._client is None:
            raise RuntimeError("no aiobotocore client yet: await S3Driver.botocore()")
        return self._client

    @property
    def transport(self) -> S3Transport:
        if self._transport is None:
            raise RuntimeError("S3Driver.start() was not called")
        return self._transport

    async def close(self) -> None:
        stack, self._stack = self._stack, None
        self._client = None
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.close()
        if stack is not None:
            await stack.aclose()

    # -- keys ------------------------------------------------------------------------------------

    def full_key(self, key: str) -> str:
        key = key.strip("/")
        if not self.prefix:
            return key
        return f"{self.prefix}/{key}" if key else self.prefix

    def _dir_prefix(self, key: str) -> str:
        full = self.full_key(key)
        return f"{full}/" if full else ""

    def _relative(self, full: str) -> str:
        if self.prefix:
            return full[len(self.prefix) + 1 :]
        return full

    # -- whole objects (also used by the writer, with bucket keys) -------------------------------

    async def get_full(self, full: str, key: str | None = None) -> bytes:
        data, _ = await self.transport.get(full, key or full)
        return data

    async def put_full(
        self,
        full: str,
        data: bytes,
        key: str | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        """PutObject; with a condition, a concurrent change raises WriterBusy. Returns the ETag."""
        return await self.transport.put(full, key or full, data, if_match, if_none_match)

    async def get_etag(self, full: str, key: str) -> tuple[bytes, str]:
        return await self.transport.get(full, key)

    async def delete_full(self, keys: Keys) -> None:
        for i in range(0, len(keys), 1000):
            batch = keys[i : i + 1000]
            if len(batch) == 1:
                await self.transport.delete(batch[0], batch[0])
                continue
            failures = await self.transport.delete_many(batch)
            failed = [f for f in failures if f.code not in NOT_FOUND_CODES]
            if failed:
                f = failed[0]
                raise classify(0, f.code, f.key, f"delete failed: {f.message}"[:200])

    async def abort_upload(self, full: str, upload_id: str) -> None:
        with contextlib.suppress(PathNotFound):
            await self.transport.abort_upload(full, full, upload_id)

    async def _list_full(self, prefix: str, delimiter: bool) -> AsyncIterator[ListPage]:
        token: str | None = None
        while True:
            page = await self.transport.list_page(prefix, delimiter, token)
            yield page
            if not page.next_token:
                return
            token = page.next_token

    # -- the driver interface --------------------------------------------------------------------

    async def get(self, key: str) -> bytes:
        return await self.get_full(self.full_key(key), key)

    async def put(self, key: str, data: bytes) -> None:
        await self.put_full(self.full_key(key), data, key)

    async def create(self, key: str, data: bytes) -> None:
        try:
            await self.put_full(self.full_key(key), data, key, if_none_match=True)
        except WriterBusy:
            raise AlreadyExists(key) from None

    async def stat(self, key: str) -> ObjectInfo:
        head = await self.transport.head(self.full_key(key), key)
        return ObjectInfo(key, head.size, head.modified)

    async def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        if length == 0:
            return
        full = self.full_key(key)
        position, end = offset, None if length is None else offset + length  # end exclusive
        for attempt in range(READ_RESUMES + 1):
            args: dict[str, Any] = {"Bucket": self.bucket, "Key": full}
            if position or end is not None:
                args["Range"] = f"bytes={position}-{'' if end is None else end - 1}"
            try:
                resp = await (await self.botocore()).get_object(**args)
            except ClientError as exc:
                if error_code(exc) == "InvalidRange" or http_status(exc) == 416:
                    return
                raise translate(exc, key) from exc
            except (TimeoutError, BotoCoreError, aiohttp.ClientError, OSError) as exc:
                raise translate(exc, key) from exc
            try:
                async with resp["Body"] as body:
                    async for chunk in body.iter_chunks(READ_CHUNK):
                        if end is not None and position + len(chunk) > end:
                            chunk = chunk[: end - position]
                        position += len(chunk)
                        if chunk:
                            yield chunk
                        if end is not None and position >= end:
                            return
                return
            except (TimeoutError, BotoCoreError, aiohttp.ClientError, OSError) as exc:
                # A reset in the middle of a body: resume from where it stopped.
                if attempt == READ_RESUMES:
                    raise translate(exc, key) from exc
                await asyncio.sleep(0.1 * 2**attempt)

    async def list(self, prefix: str) -> list[str]:
        base = self._dir_prefix(prefix)
        names: set[str] = set()
        found = False
        async for page in self._list_full(base, delimiter=True):
            found = found or bool(page.prefixes or page.objects)
            for common in page.prefixes:
                names.add(common[len(base) :].rstrip("/"))
            for obj in page.objects:
                name = obj.key[len(base) :]
                if name and not is_internal(name):
                    names.add(name)
        names.discard("")
        if not found and prefix.strip("/"):
            raise PathNotFound(prefix)
        return sorted(names)

    async def walk(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        async for page in self._list_full(self._dir_prefix(prefix), delimiter=False):
            for obj in page.objects:
                yield ObjectInfo(self._relative(obj.key), obj.size, obj.modified)

    async def delete(self, key: str, *, prune: bool = True) -> None:
        # One ordered DeleteObjects: the object, then its directory entry if now empty.
        await self.delete_many([key], prune=prune)

    async def delete_many(self, keys: Sequence[str], *, prune: bool = True) -> None:
        """Ordered DeleteObjects of up to 1,000 keys each: the objects, then (with ``prune``
        and ``prune_directories``) their directory entries, deepest first, which a store only
        removes when they are empty."""
        fulls = [self.full_key(k) for k in keys]
        markers: Keys = []
        if prune and self.settings.prune_directories:
            parents = {f.rsplit("/", 1)[0] for f, k in zip(fulls, keys, strict=True) if "/" in k}
            markers = [f"{p}/" for p in sorted(parents, key=lambda p: p.count("/"), reverse=True)]
        await self.delete_full(fulls + markers)

    async def delete_tree(self, prefix: str) -> None:
        """Delete everything below ``prefix``; abort the multipart uploads of writers there."""
        full = self.full_key(prefix)
        children: Keys = []
        async for page in self._list_full(f"{full}/", delimiter=False):
            children.extend(obj.key for obj in page.objects)
        for state_key in [k for k in children if k.endswith(STATE_SUFFIX)]:
            with contextlib.suppress(PathNotFound, ValueError, KeyError):
                state, _ = WriterState.from_bytes(await self.get_full(state_key))
                if state.upload_id:
                    await self.abort_upload(state_key[: -len(STATE_SUFFIX)], state.upload_id)
        # The tree's own directory entries only: the parent's is shared (``_uploads/`` by every
        # upload of a repository), and SeaweedFS stalls for seconds when concurrent requests
        # delete a busy directory's entry (16 concurrent small pushes: 58 -> 195 blobs/s
        # without it). An emptied parent may stay listed, empty, on such a store.
        markers = self._markers(full, children) if self.settings.prune_directories else []
        if children or markers:
            await self.delete_full(children + markers)

    def _markers(self, full: str, children: Keys) -> Keys:
        """Directory entries inside a deleted tree, deepest first.

        Some stores (SeaweedFS) keep, and list, a directory after its last object is gone.
        DeleteObjects handles its keys in order, so these go in the same request, after the
        objects; a store without such entries ignores them, and a non-empty directory entry is
        never removed by them.
        """
        dirs = {full}
        for child in children:
            parent = child.rsplit("/", 1)[0]
            while len(parent) > len(full):
                dirs.add(parent)
                parent = parent.rsplit("/", 1)[0]
        return [f"{d}/" for d in sorted(dirs, key=lambda d: d.count("/"), reverse=True)]

    async def move(self, src: str, dst: str) -> None:
        src_full, dst_full = self.full_key(src), self.full_key(dst)
        try:
            await self.transport.copy(src_full, dst_full, src)
        except CopyTooLarge:
            await self._multipart_copy(src, src_full, dst_full)
        await self.transport.delete(src_full, src)

    async def _multipart_copy(self, src: str, src_full: str, dst_full: str) -> None:
        """Copy an object larger than CopyObject allows (5 GiB), part by part, server-side."""
        size = (await self.stat(src)).size
        # The multipart upload through the transport, as for writers; only UploadPartCopy is
        # botocore's (the lean client has no copy-part request).
        upload_id = await self.transport.create_upload(dst_full, src)
        try:
            client = await self.botocore()
            etags = []
            for number, start in enumerate(range(0, size, COPY_PART), start=1):
                last = min(start + COPY_PART, size) - 1
                part = await call(
                    src,
                    client.upload_part_copy(
                        Bucket=self.bucket,
                        Key=dst_full,
                        UploadId=upload_id,
                        PartNumber=number,
                        CopySource={"Bucket": self.bucket, "Key": src_full},
                        CopySourceRange=f"bytes={start}-{last}",
                    ),
                )
                etags.append(str(part["CopyPartResult"]["ETag"]))
            await self.transport.complete_upload(dst_full, src, upload_id, etags)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.abort_upload(dst_full, upload_id)
            raise

    async def writer(self, key: str, append: bool = False) -> FileWriter:
        full = self.full_key(key)
        state_key = full + STATE_SUFFIX
        try:
            raw, etag = await self.get_etag(state_key, key)
        except PathNotFound:
            raw, etag = None, ""
        if raw is None:
            return S3Writer(self, key, WriterState(part_size=self.settings.part_size), False)
        state, inline = WriterState.from_bytes(raw)
        writer = S3Writer(self, key, state, True, inline, etag)
        if not append:
            await writer.cancel()
            return S3Writer(self, key, WriterState(part_size=self.settings.part_size), False)
        return writer

    async def redirect_url(self, key: str, expires_in: int) -> str | None:
        return await self.transport.presign(self.full_key(key), expires_in)

    async def ping(self) -> None:
        await self.transport.ping()

    # -- maintenance -----------------------------------------------------------------------------

    async def abort_stale_uploads(self, older_than: float) -> int:
        """Abort multipart uploads under the root started before ``older_than`` (epoch s) that
        no writer state names (a live slow upload's multipart upload can be old: it stays)."""
        aborted = 0
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._dir_prefix("")}
        while True:
            page = await call("", (await self.botocore()).list_multipart_uploads(**args))
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() >= older_than:
                    continue
                if await self._named_by_writer(upload["Key"], upload["UploadId"]):
                    continue
                await self.abort_upload(upload["Key"], upload["UploadId"])
                aborted += 1
            if not page.get("IsTruncated"):
                return aborted
            args["KeyMarker"] = page.get("NextKeyMarker")
            args["UploadIdMarker"] = page.get("NextUploadIdMarker")

    async def _named_by_writer(self, full: str, upload_id: str) -> bool:
        try:
            state, _ = WriterState.from_bytes(await self.get_full(full + STATE_SUFFIX))
        except (PathNotFound, ValueError, KeyError):
            return False
        return state.upload_id == upload_id
