"""Signing and verification keys: ``berth keygen``, the token endpoint's private key, and the
trusted public keys of token issuers (JWKS file or URL, or a PEM bundle of keys/certificates).

Only asymmetric keys exist here: a JWKS ``oct`` (shared secret) key is ignored, so an HS*
token can never be checked against a public key. Every key gets its RFC 7638 thumbprint as
``kid``; keys from a PEM bundle also answer to the libtrust key id that docker_auth-style
issuers put in ``kid``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt import PyJWK
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from ..singleflight import SingleFlight
from .files import WatchedFile

log = logging.getLogger("berth.auth")

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
ALLOWED_ALGORITHMS = frozenset(EC_ALGORITHMS.values()) | RSA_ALGORITHMS


def check_algorithms(algorithms: list[str]) -> frozenset[str]:
    """The configured algorithms, refusing ``none`` and every symmetric (HS*) one."""
    refused = [a for a in algorithms if a not in ALLOWED_ALGORITHMS]
    if refused or not algorithms:
        raise ValueError(
            f"auth.token.algorithms: {refused or 'empty'} not allowed; "
            f"choose from {sorted(ALLOWED_ALGORITHMS)}"
        )
    return frozenset(algorithms)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(key: PublicKey) -> dict[str, str]:
    if isinstance(key, ec.EllipticCurvePublicKey):
        jwk = json.loads(ECAlgorithm.to_jwk(key))
    else:
        jwk = json.loads(RSAAlgorithm.to_jwk(key))
    return {k: v for k, v in jwk.items() if k in ("kty", "crv", "x", "y", "n", "e")}


def thumbprint(key: PublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256), the ``kid`` of every key here."""
    jwk = public_jwk(key)
    members = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canonical.encode()).digest())


def libtrust_kid(key: PublicKey) -> str:
    """The key id Docker's libtrust derives: base32 of a DER SPKI hash, in groups of four."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i : i + 4] for i in range(0, 48, 4))


def algorithm_for(key: PrivateKey | PublicKey) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        alg = EC_ALGORITHMS.get(key.curve.name)
        if alg is None:
            raise ValueError(f"unsupported EC curve {key.curve.name}")
        return alg
    return "RS256"


def key_accepts(key: PublicKey, alg: str) -> bool:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return EC_ALGORITHMS.get(key.curve.name) == alg
    return isinstance(key, rsa.RSAPublicKey) and alg in RSA_ALGORITHMS


# -- private keys --------------------------------------------------------------------------------


def generate_private_key(kind: str = "ec", bits: int = 3072) -> PrivateKey:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        if bits < 2048:
            raise ValueError("RSA keys are at least 2048 bits")
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    raise ValueError(f"unknown key type {kind!r} (ec or rsa)")


def private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True)
class SigningKey:
    key: PrivateKey
    algorithm: str
    kid: str

    @property
    def public(self) -> PublicKey:
        return self.key.public_key()

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        jwk = {**public_jwk(self.public), "kid": self.kid, "alg": self.algorithm, "use": "sig"}
        return {"keys": [jwk]}


def load_signing_key(path: str | Path) -> SigningKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"{path}: the signing key must be an EC (P-256) or RSA private key")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < 2048:
        raise ValueError(f"{path}: RSA signing keys are at least 2048 bits")
    return SigningKey(key, algorithm_for(key), thumbprint(key.public_key()))


# -- trusted keys --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustedKey:
    kids: frozenset[str]
    key: PublicKey


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.DOTALL)


def _from_public(key: object, extra_kids: tuple[str, ...] = ()) -> TrustedKey | None:
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        key = key.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return None
    kids = {thumbprint(key), libtrust_kid(key), *extra_kids}
    return TrustedKey(frozenset(k for k in kids if k), key)


def parse_pem_bundle(data: bytes) -> list[TrustedKey]:
    keys: list[TrustedKey] = []
    for match in _PEM_BLOCK.finditer(data):
        kind, block = match.group(1), match.group(0)
        obj: object
        if kind == b"CERTIFICATE":
            obj = x509.load_pem_x509_certificate(block).public_key()
        elif kind == b"PUBLIC KEY":
            obj = serialization.load_pem_public_key(block)
        elif kind.endswith(b"PRIVATE KEY"):
            obj = serialization.load_pem_private_key(block, password=None)
        else:
            continue
        trusted = _from_public(obj)
        if trusted is not None:
            keys.append(trusted)
    return keys


def parse_jwks(data: bytes | str | dict[str, object]) -> list[TrustedKey]:
    document = json.loads(data) if isinstance(data, bytes | str) else data
    if not isinstance(document, dict):
        raise ValueError("a JWKS document is a JSON object")
    items = document.get("keys", [document])
    if not isinstance(items, list):
        raise ValueError("a JWKS `keys` member is a list")
    keys: list[TrustedKey] = []
    for item in items:
        if not isinstance(item, dict) or item.get("kty") not in ("EC", "RSA"):
            continue  # symmetric (oct) and unknown keys are never trusted
        if item.get("use", "sig") != "sig":
            continue
        try:
            jwk = PyJWK(item)
        except Exception as exc:
            log.warning("ignoring an unusable JWK: %s", exc)
            continue
        kid = item.get("kid")
        trusted = _from_public(jwk.key, (kid,) if isinstance(kid, str) else ())
        if trusted is not None:
            keys.append(trusted)
    return keys


def parse_trusted_keys(data: bytes) -> list[TrustedKey]:
    """A JWKS (JSON) or a PEM bundle, told apart by the first character."""
    if data.lstrip()[:1] == b"{":
        return parse_jwks(data)
    keys = parse_pem_bundle(data)
    if not keys and data.strip():
        raise ValueError("no usable public key or certificate in the PEM bundle")
    return keys


class KeySet:
    """The keys a verifier trusts: the built-in signer's, a file's (re-read when it changes),
    and a JWKS URL's (re-fetched every ``refresh_seconds``, or sooner for an unknown ``kid``).

    The JWKS fetch is single-flight: every request that needs the keys while a fetch is under
    way waits for that one fetch (so the first requests after a start do not see an empty key
    set and answer 401), and the issuer gets one request, not one per client.
    """

    MIN_REFETCH_SECONDS = 30.0
    FETCH_TIMEOUT_SECONDS = 10.0
    MAX_JWKS_BYTES = 1024 * 1024

    def __init__(
        self,
        static: list[TrustedKey] | None = None,
        file: str | Path | None = None,
        url: str | None = None,
        refresh_seconds: float = 300.0,
    ) -> None:
        self._static = list(static or [])
        self._file = WatchedFile(Path(file), parse_trusted_keys) if file else None
        self._url = url
        self._refresh = refresh_seconds
        self._remote: list[TrustedKey] = []
        self._fetched = -math.inf  # when the last fetch started (monotonic); never: due now
        self._fetches: SingleFlight[str, None] = SingleFlight()

    async def _download(self, url: str) -> bytes:
        timeout = aiohttp.ClientTimeout(total=self.FETCH_TIMEOUT_SECONDS)
        # trust_env: HTTP(S)_PROXY / NO_PROXY apply, as for any other HTTP client.
        async with (
            aiohttp.ClientSession(timeout=timeout, trust_env=True) as session,
            session.get(url, headers={"Accept": "application/json"}) as response,
        ):
            response.raise_for_status()
            body = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                body += chunk
                if len(body) > self.MAX_JWKS_BYTES:
                    raise ValueError(f"JWKS document larger than {self.MAX_JWKS_BYTES} bytes")
            return bytes(body)

    async def _fetch(self) -> None:
        assert self._url is not None
        self._fetched = time.monotonic()
        try:
            self._remote = parse_jwks(await self._download(self._url))
        except Exception as exc:  # keep the previous keys
            log.warning("cannot fetch JWKS from %s: %s: %s", self._url, type(exc).__name__, exc)

    async def _refetch(self) -> None:
        """Start a fetch, or join the one under way, and wait for it to finish.

        The fetch runs as a task of its own, shielded: a request that is cancelled (its client
        went away) stops waiting but does not cancel the fetch the others are waiting on.
        """
        await self._fetches.run("jwks", self._fetch)

    def _fetching(self) -> bool:
        return self._fetches.running("jwks") is not None

    async def keys(self, kid: str | None) -> list[TrustedKey]:
        if self._url is None:
            return self._lookup(kid)
        if time.monotonic() - self._fetched >= self._refresh:
            await self._refetch()
        found = self._lookup(kid)
        # Nothing known yet for this token: wait for the fetch under way (the first requests
        # after a start), or fetch again for a new kid (at most every MIN_REFETCH_SECONDS).
        stale = time.monotonic() - self._fetched >= self.MIN_REFETCH_SECONDS
        if not found and (self._fetching() or (kid and stale)):
            await self._refetch()
            found = self._lookup(kid)
        return found

    def _lookup(self, kid: str | None) -> list[TrustedKey]:
        every = [*self._static, *(self._file.get() if self._file else []), *self._remote]
        if kid is None:
            return every
        return [k for k in every if kid in k.kids]


__all__ = [
    "ALLOWED_ALGORITHMS",
    "KeySet",
    "SigningKey",
    "TrustedKey",
    "algorithm_for",
    "check_algorithms",
    "generate_private_key",
    "key_accepts",
    "libtrust_kid",
    "load_signing_key",
    "parse_jwks",
    "parse_pem_bundle",
    "parse_trusted_keys",
    "private_pem",
    "public_pem",
    "thumbprint",
]
