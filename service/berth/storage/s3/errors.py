"""Mapping object-store failures to the driver's errors.

botocore already retries throttling (``SlowDown``), 5xx answers, timeouts and connection resets
with exponential backoff and jitter (``retries.mode = standard``); whatever still fails after
that is the store being down, which the registry answers with 503 and ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from ..driver import PathNotFound, StorageRefused, StorageUnavailable, WriterBusy

T = TypeVar("T")

NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404", "NoSuchUpload"})
UNAVAILABLE_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "OperationAborted",
        "TooManyRequests",
        "RequestLimitExceeded",
        # The store's clock and ours disagree: nothing to refuse, retry once it settles.
        "RequestTimeTooSkewed",
    }
)
# Statuses worth retrying: throttling and the server's own failures.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def is_transient(status: int, code: str) -> bool:
    """Whether an answer is worth retrying: the rule of both transports (botocore's standard
    mode retries part of it by itself; the rest is added to its client in ``retry_more``)."""
    return status in RETRY_STATUSES or code in UNAVAILABLE_CODES


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def is_not_found(exc: ClientError) -> bool:
    return error_code(exc) in NOT_FOUND_CODES or http_status(exc) == 404


def classify(status: int, code: str, key: str, message: str = "") -> Exception:
    """The driver error for a store's answer: HTTP ``status`` and S3 error ``code``."""
    if code in NOT_FOUND_CODES or status == 404:
        return PathNotFound(key)
    if code == "PreconditionFailed" or status == 412:
        return WriterBusy(key)
    if code in UNAVAILABLE_CODES or status in RETRY_STATUSES or status >= 500:
        return StorageUnavailable(f"object store: {code or status} for {key}")
    return StorageRefused(f"object store: HTTP {status} {code} for {key}: {message}".strip())


def translate(exc: BaseException, key: str) -> BaseException:
    """The driver-level exception for a failure of an S3 call on ``key``."""
    if isinstance(exc, ClientError):
        message = str(exc.response.get("Error", {}).get("Message", ""))[:200]
        return classify(http_status(exc), error_code(exc), key, message)
    if isinstance(exc, BotoCoreError | aiohttp.ClientError | TimeoutError | OSError):
        return StorageUnavailable(f"object store unreachable: {type(exc).__name__}: {exc}")
    return exc


async def call(key: str, awaitable: Awaitable[T]) -> T:
    """Await one S3 call, mapping its failure (after botocore's retries) to driver errors."""
    try:
        return await awaitable
    except (TimeoutError, ClientError, BotoCoreError, aiohttp.ClientError, OSError) as exc:
        raise translate(exc, key) from exc
