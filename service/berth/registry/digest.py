"""Digests (``algorithm:hex``) and hashers whose state can be saved and resumed.

Upload state lives in storage so that any replica can continue any upload. CPython's hashlib
cannot serialise a hash state, but OpenSSL's low-level ``SHA256_*``/``SHA512_*`` functions work on
plain structs that can be copied out and back in (see ``_openssl``). Where that library is
missing, ``Hasher.restore`` returns None and the caller rehashes the stored bytes instead.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from . import _openssl
from .errors import DigestInvalid

ALGORITHMS = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^(sha256|sha512):([a-f0-9]+)$")


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def parse(cls, value: str) -> Digest:
        """Parse and validate; unknown algorithms and wrong lengths are DIGEST_INVALID."""
        match = _DIGEST_RE.fullmatch(value)
        if not match or len(match.group(2)) != ALGORITHMS[match.group(1)]:
            raise DigestInvalid(f"invalid digest: {value[:200]!r}")
        return cls(match.group(1), match.group(2))

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())


class Hasher(Protocol):
    algorithm: str

    def update(self, data: bytes | bytearray) -> None: ...
    def hexdigest(self) -> str: ...
    def state(self) -> bytes | None: ...


class _HashlibHasher:
    """Fallback hasher: fast, but its state cannot be saved."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self._h = hashlib.new(algorithm)

    def update(self, data: bytes | bytearray) -> None:
        self._h.update(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    def state(self) -> bytes | None:
        return None


def new_hasher(algorithm: str) -> Hasher:
    if _openssl.available(algorithm):
        return _openssl.OpenSSLHasher(algorithm)
    return _HashlibHasher(algorithm)


def restore_hasher(algorithm: str, state: bytes) -> Hasher | None:
    """A hasher continuing from ``state``, or None when the state cannot be used here."""
    if _openssl.available(algorithm):
        return _openssl.OpenSSLHasher.restore(algorithm, state)
    return None
