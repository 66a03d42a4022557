"""Repository globs, shared by access policies and event filters."""

from __future__ import annotations

import re


def glob_to_regex(glob: str) -> re.Pattern[str]:
    """``**`` spans path components, ``*`` stays inside one, ``?`` is one character."""
    out = []
    i = 0
    while i < len(glob):
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out))


__all__ = ["glob_to_regex"]
