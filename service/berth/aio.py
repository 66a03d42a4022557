"""Small asyncio helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def with_alongside(first: Awaitable[T], second: Awaitable[None]) -> T:
    """``first``'s result, ``second`` awaited alongside it. Both run to the end (no request
    is left running unseen), then ``first``'s failure, or else ``second``'s, is raised."""
    result, other = await asyncio.gather(first, second, return_exceptions=True)
    if isinstance(result, BaseException):
        raise result
    if isinstance(other, BaseException):
        raise other
    return result
