"""Storage health: one bounded check, its gauges, the periodic background check, and the
draining flag that ``/readyz`` reports once shutdown has begun."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from ..storage.driver import StorageDriver
from .metrics import record_storage_check

log = logging.getLogger(__name__)


async def check_storage(driver: StorageDriver, timeout: float) -> str | None:  # noqa: ASYNC109
    """``None`` when storage answered within ``timeout``, else why not (an exception name)."""
    start = time.perf_counter()
    try:
        await asyncio.wait_for(driver.ping(), timeout)
    except TimeoutError:
        error: str | None = f"no answer within {timeout:g}s"
    except Exception as exc:  # any failure is "unavailable"; the type goes to the body
        error = type(exc).__name__
    else:
        error = None
    record_storage_check(error is None, time.perf_counter() - start)
    return error


async def check_periodically(
    driver: StorageDriver,
    interval: float,
    timeout: float,  # noqa: ASYNC109
) -> None:
    previous: str | None = None
    while True:
        error = await check_storage(driver, timeout)
        if error != previous:
            if error is None:
                log.info("storage is reachable again")
            else:
                log.warning("storage health check failed: %s", error)
            previous = error
        await asyncio.sleep(interval)


@contextlib.contextmanager
def on_shutdown_signal(callback: Callable[[], None]) -> Any:
    """Call ``callback`` when SIGTERM or SIGINT arrives, then let the installed handler (uvicorn's:
    stop accepting, drain, exit) run. Only the main thread can handle signals; elsewhere (tests)
    this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(sig)

        def chained(signum: int, frame: Any, handler: Any = handler) -> None:
            callback()
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL:
                raise SystemExit(128 + signum)

        previous[sig] = signal.signal(sig, chained)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            # Restore only what is still ours (uvicorn restores its own saved handlers itself).
            if getattr(signal.getsignal(sig), "__name__", "") == "chained":
                signal.signal(sig, handler)
