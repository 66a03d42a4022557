"""The S3 transport on the aiobotocore client (any addressing style, any endpoint).

Used when the lean client (``fastpath``) does not apply: ``storage.s3.fast_path`` off, or
virtual-hosted addressing / no ``endpoint_url`` (AWS). botocore's *standard* retries, plus the
transient answers it does not retry by itself (``retry_more``), so both transports retry the
same answers; failures become the driver's errors (``errors.translate``).
"""

from __future__ import annotations

import io
import random
from collections.abc import AsyncIterable
from typing import Any

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from .errors import call, error_code, is_not_found, is_transient, translate
from .transport import CopyTooLarge, DeleteFailure, Entry, Head, ListPage, S3Transport

_BODY_ERRORS = (TimeoutError, BotoCoreError, aiohttp.ClientError, OSError)


class PartBody(io.RawIOBase):
    """A seekable read-only view of a part buffer, so the HTTP client sends it in small pieces
    (its transport never holds a second copy of the whole part) and can rewind it to retry."""

    def __init__(self, data: bytearray) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), len(self._view) - self._pos)
        buffer[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, min(base + offset, len(self._view)))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return len(self._view)

    def close(self) -> None:
        # Keep the view usable: the HTTP client may close the body between retries.
        pass


def retry_more(client: Any, max_attempts: int) -> None:
    """Make ``client`` also retry what botocore's standard mode does not: 429 with any error
    code and the transient 4xx codes (``RequestTimeTooSkewed``), as the lean client does.

    A ``needs-retry`` handler beside botocore's own: the endpoint retries when any handler
    returns a delay, so answers botocore already retries are retried once, not twice.
    """

    def needs_retry(
        response: Any = None, attempts: int = 0, caught_exception: Any = None, **_: Any
    ) -> float | None:
        if response is None or attempts >= max_attempts:
            return None
        http, parsed = response
        code = str((parsed or {}).get("Error", {}).get("Code", ""))
        if not is_transient(int(getattr(http, "status_code", 0) or 0), code):
            return None
        return random.random() * min(20.0, 2.0 ** (attempts - 1))

    client.meta.events.register(
        "needs-retry.s3", needs_retry, unique_id="berth-retry-transient-4xx"
    )


class BotocoreTransport(S3Transport):
    name = "botocore"

    def __init__(self, client: Any, signer: Any, bucket: str, object_args: dict[str, str]) -> None:
        self._client = client
        self._signer = signer  # a client for the public endpoint (or ``client``)
        self._bucket = bucket
        self._object_args = object_args

    async def get(self, full: str, key: str) -> tuple[bytes, str]:
        resp = await call(key, self._client.get_object(Bucket=self._bucket, Key=full))
        async with resp["Body"] as body:
            try:
                data: bytes = await body.read()
            except _BODY_ERRORS as exc:
                raise translate(exc, key) from exc
        return data, str(resp.get("ETag", ""))

    async def head(self, full: str, key: str) -> Head:
        resp = await call(key, self._client.head_object(Bucket=self._bucket, Key=full))
        return Head(int(resp["ContentLength"]), resp["LastModified"].timestamp())

    async def put(
        self,
        full: str,
        key: str,
        data: bytes,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        condition = {"IfMatch": if_match} if if_match else {}
        if not if_match and if_none_match:
            condition["IfNoneMatch"] = "*"
        resp = await call(
            key,
            self._client.put_object(
                Bucket=self._bucket,
                Key=full,
                Body=data,
                ContentLength=len(data),
                ContentType="application/octet-stream",
                **self._object_args,
                **condition,
            ),
        )
        return str(resp.get("ETag", ""))

    async def delete(self, full: str, key: str) -> None:
        await call(key, self._client.delete_object(Bucket=self._bucket, Key=full))

    async def delete_many(self, fulls: list[str]) -> list[DeleteFailure]:
        resp = await call(
            fulls[0],
            self._client.delete_objects(
                Bucket=self._bucket,
                Delete={"Objects": [{"Key": k} for k in fulls], "Quiet": True},
            ),
        )
        return [
            DeleteFailure(str(e.get("Key", "")), str(e.get("Code", "")), str(e.get("Message", "")))
            for e in resp.get("Errors", [])
        ]

    async def list_page(self, prefix: str, delimiter: bool, token: str | None) -> ListPage:
        args: dict[str, Any] = {"Bucket": self._bucket, "Prefix": prefix}
        if delimiter:
            args["Delimiter"] = "/"
        if token:
            args["ContinuationToken"] = token
        page = await call(prefix, self._client.list_objects_v2(**args))
        objects = [
            Entry(o["Key"], int(o["Size"]), o["LastModified"].timestamp())
            for o in page.get("Contents", [])
        ]
        prefixes = [cp["Prefix"] for cp in page.get("CommonPrefixes", [])]
        more = page.get("NextContinuationToken") if page.get("IsTruncated") else None
        return ListPage(objects, prefixes, more or None)

    async def copy(self, src_full: str, dst_full: str, key: str) -> None:
        try:
            await self._client.copy_object(
                Bucket=self._bucket,
                Key=dst_full,
                CopySource={"Bucket": self._bucket, "Key": src_full},
                **self._object_args,
            )
        except ClientError as exc:
            if not is_not_found(exc) and error_code(exc) in ("InvalidRequest", "EntityTooLarge"):
                raise CopyTooLarge(key) from exc
            raise translate(exc, key) from exc
        except _BODY_ERRORS as exc:
            raise translate(exc, key) from exc

    async def create_upload(self, full: str, key: str) -> str:
        resp = await call(
            key,
            self._client.create_multipart_upload(
                Bucket=self._bucket, Key=full, **self._object_args
            ),
        )
        return str(resp["UploadId"])

    async def upload_part(
        self,
        full: str,
        key: str,
        upload_id: str,
        number: int,
        length: int,
        body: bytes | bytearray | AsyncIterable[bytes | memoryview],
    ) -> str:
        if isinstance(body, bytes | bytearray):
            payload: Any = PartBody(body) if isinstance(body, bytearray) else body
        else:
            # botocore signs the payload over http, so the part is gathered first (the lean
            # client streams it).
            gathered = bytearray()
            async for chunk in body:
                gathered += chunk
            payload = bytes(gathered)
        if len(payload) != length:
            raise ValueError(f"part {number} of {key}: {len(payload)} bytes, not {length}")
        resp = await call(
            key,
            self._client.upload_part(
                Bucket=self._bucket,
                Key=full,
                UploadId=upload_id,
                PartNumber=number,
                Body=payload,
                ContentLength=length,
            ),
        )
        return str(resp["ETag"])

    async def complete_upload(self, full: str, key: str, upload_id: str, etags: list[str]) -> None:
        parts = [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]
        await call(
            key,
            self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=full,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            ),
        )

    async def abort_upload(self, full: str, key: str, upload_id: str) -> None:
        await call(
            key,
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=full, UploadId=upload_id),
        )

    async def ping(self) -> None:
        await call("", self._client.head_bucket(Bucket=self._bucket))

    async def presign(self, full: str, expires_in: int) -> str:
        url: str = await self._signer.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": full}, ExpiresIn=expires_in
        )
        return url
