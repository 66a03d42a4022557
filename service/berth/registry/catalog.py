"""The repository catalog: every repository name, found by walking the repositories tree.

A directory holding ``_manifests`` is a repository (as in Distribution); directories starting with
``_`` are never descended into, so the walk touches directories, not link files.
"""

from __future__ import annotations

import asyncio

from ..storage import paths
from ..storage.driver import PathNotFound, StorageDriver


async def repositories(driver: StorageDriver) -> list[str]:
    found: list[str] = []

    async def visit(prefix: str, name: str) -> None:
        try:
            children = await driver.list(prefix)
        except PathNotFound:
            return
        if name and "_manifests" in children:
            found.append(name)
        subdirs = [c for c in children if not c.startswith("_")]
        await asyncio.gather(
            *(visit(f"{prefix}/{c}", f"{name}/{c}" if name else c) for c in subdirs)
        )

    await visit(paths.REPOSITORIES, "")
    return sorted(found)


def paginate(items: list[str], n: int | None, last: str | None) -> tuple[list[str], bool]:
    """Items after ``last``, at most ``n``; and whether more remain."""
    if last:
        items = [i for i in items if i > last]
    if n is None:
        return items, False
    return items[:n], len(items) > n
