"""htpasswd files with bcrypt entries: parse, verify in constant time, add and remove users.

Verification always runs bcrypt, for unknown users too (against a dummy hash of the same cost),
so the time taken says nothing about which user names exist. A successful check is remembered
for a short while (keyed by an HMAC of the credentials under a per-process random key, never
the password itself), so clients that send Basic credentials on every request do not pay a
bcrypt per request; a change of the file forgets everything.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import bcrypt

from .files import WatchedFile

BCRYPT_PREFIXES = (b"$2y$", b"$2b$", b"$2a$")
MAX_PASSWORD_BYTES = 72  # bcrypt ignores (bcrypt>=5: refuses) anything longer
DEFAULT_COST = 11
SUCCESS_CACHE_SECONDS = 60.0
_USER_FORBIDDEN = frozenset(":\n\r\0")


class HtpasswdError(ValueError):
    pass


def validate_user_name(name: str) -> str:
    if not name or len(name) > 255 or any(c in _USER_FORBIDDEN for c in name):
        raise HtpasswdError("a user name is 1-255 characters without ':' or line breaks")
    if name != name.strip():
        raise HtpasswdError("a user name has no leading or trailing spaces")
    return name


def hash_password(password: str, cost: int = DEFAULT_COST) -> bytes:
    raw = password.encode()
    if not raw:
        raise HtpasswdError("the password is empty")
    if len(raw) > MAX_PASSWORD_BYTES:
        raise HtpasswdError(f"bcrypt passwords are at most {MAX_PASSWORD_BYTES} bytes")
    hashed = bcrypt.hashpw(raw, bcrypt.gensalt(rounds=cost))
    return b"$2y$" + hashed[4:]  # the prefix Apache's htpasswd -B and Distribution write


def check_password(password: str, hashed: bytes) -> bool:
    raw = password.encode()
    if len(raw) > MAX_PASSWORD_BYTES:
        return False
    try:
        return bcrypt.checkpw(raw, hashed)
    except ValueError:
        return False


def parse_htpasswd(data: bytes) -> dict[str, bytes]:
    """``user:hash`` lines; only bcrypt entries count (MD5/SHA1/crypt ones are ignored)."""
    entries: dict[str, bytes] = {}
    for line in data.splitlines():
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        user, sep, hashed = line.partition(b":")
        if not sep or not hashed.startswith(BCRYPT_PREFIXES):
            continue
        entries[user.decode(errors="replace")] = hashed
    return entries


def _cost(hashed: bytes) -> int:
    try:
        return max(4, min(31, int(hashed[4:6])))
    except ValueError:
        return DEFAULT_COST


@dataclass
class _Dummy:
    cost: int
    hashed: bytes


class Htpasswd:
    """Credentials checked against an htpasswd file that is re-read when it changes."""

    def __init__(self, path: str | Path, check_seconds: float = 1.0) -> None:
        self.file = WatchedFile(Path(path), parse_htpasswd, check_seconds)
        self._key = secrets.token_bytes(32)
        self._ok: dict[bytes, tuple[int, float]] = {}
        self._dummies: dict[int, bytes] = {}
        self._limiter = anyio.CapacityLimiter(max(2, os.cpu_count() or 2))
        self._dummy(self._typical_cost(self.file.get()))  # ready before the first login

    def users(self) -> list[str]:
        return sorted(self.file.get())

    def _dummy(self, cost: int) -> bytes:
        hashed = self._dummies.get(cost)
        if hashed is None:
            hashed = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))
            self._dummies[cost] = hashed
        return hashed

    def _typical_cost(self, entries: dict[str, bytes]) -> int:
        for hashed in entries.values():
            return _cost(hashed)
        return DEFAULT_COST

    def check(self, user: str, password: str) -> tuple[bool, bool]:
        """(valid, user exists). Blocking: bcrypt. Same work whether the user exists or not."""
        entries = self.file.get()
        generation = self.file.generation
        token = hmac.new(
            self._key, user.encode() + b"\0" + password.encode(), hashlib.sha256
        ).digest()
        hit = self._ok.get(token)
        now = time.monotonic()
        if hit is not None and hit[0] == generation and hit[1] > now:
            return True, True
        hashed = entries.get(user)
        target = hashed if hashed is not None else self._dummy(self._typical_cost(entries))
        ok = check_password(password, target) and hashed is not None
        if ok:
            if len(self._ok) > 10_000:
                self._ok.clear()
            self._ok[token] = (generation, now + SUCCESS_CACHE_SECONDS)
        return ok, hashed is not None

    async def verify(self, user: str, password: str) -> tuple[bool, bool]:
        """``check`` off the event loop, at most a few bcrypt computations at a time."""
        return await anyio.to_thread.run_sync(self.check, user, password, limiter=self._limiter)


# -- editing the file (``berth user add/remove``) ---------------------------------------------


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def _write_atomically(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = 0o600
    if path.exists():
        mode = path.stat().st_mode & 0o777
    fd, tmp = tempfile.mkstemp(prefix=".htpasswd-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write("".join(f"{line}\n" for line in lines))
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def set_user(path: str | Path, user: str, password: str, cost: int = DEFAULT_COST) -> bool:
    """Add ``user`` or replace its password; True when the user is new."""
    validate_user_name(user)
    entry = f"{user}:{hash_password(password, cost).decode()}"
    path = Path(path)
    lines = _read_lines(path)
    new = True
    for i, line in enumerate(lines):
        if line.partition(":")[0] == user:
            lines[i] = entry
            new = False
    if new:
        lines.append(entry)
    _write_atomically(path, lines)
    return new


def remove_user(path: str | Path, user: str) -> bool:
    """Remove ``user``; False when it was not there."""
    path = Path(path)
    lines = _read_lines(path)
    kept = [line for line in lines if line.partition(":")[0] != user]
    if len(kept) == len(lines):
        return False
    _write_atomically(path, kept)
    return True


__all__ = [
    "Htpasswd",
    "HtpasswdError",
    "check_password",
    "hash_password",
    "parse_htpasswd",
    "remove_user",
    "set_user",
    "validate_user_name",
]
