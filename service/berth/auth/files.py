"""A file parsed once and re-parsed only when it changes (mtime, size or inode).

At most one ``stat`` per ``check_seconds``, never a read on the request path while the file
is unchanged. Kubernetes updates a mounted Secret by swapping a symlink, which changes the
inode ``stat`` sees. A file that stops parsing keeps the last good contents (and logs why).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("berth.auth")


class WatchedFile(Generic[T]):
    def __init__(
        self, path: str | Path, parse: Callable[[bytes], T], check_seconds: float = 1.0
    ) -> None:
        self.path = Path(path)
        self._parse = parse
        self._check_seconds = check_seconds
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._checked = 0.0
        self.generation = 0
        self._value = self._load(required=True)

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self, required: bool) -> T:
        signature = self._stat()
        value = self._parse(self.path.read_bytes())
        self._signature = signature
        self.generation += 1
        if not required:
            log.info("reloaded %s", self.path, extra={"fields": {"file": str(self.path)}})
        return value

    def get(self) -> T:
        now = time.monotonic()
        if now - self._checked < self._check_seconds:
            return self._value
        with self._lock:
            if now - self._checked < self._check_seconds:
                return self._value
            self._checked = now
            try:
                if self._stat() != self._signature:
                    self._value = self._load(required=False)
            except Exception as exc:  # keep serving the last good contents
                log.warning(
                    "cannot reload %s, keeping the previous contents: %s",
                    self.path,
                    type(exc).__name__,
                    extra={"fields": {"file": str(self.path), "error": str(exc)[:200]}},
                )
            return self._value

    def force_check(self) -> T:
        self._checked = 0.0
        return self.get()
