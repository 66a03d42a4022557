"""The JWKS URL of an external token issuer, fetched over real HTTP (aiohttp, a runtime
dependency) from an ``aiohttp.web`` server on 127.0.0.1: the fetch is single-flight, so the
concurrent first requests of a cold registry all wait for the one fetch and none gets 401.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from aiohttp import web

from berth.app import create_app
from berth.auth.keys import KeySet, SigningKey, generate_private_key, load_signing_key, private_pem
from berth.auth.tokens import TokenIssuer, TokenVerifier
from berth.config import Settings

ISSUER = "idp"
SERVICE = "berth"


@dataclass
class JwksServer:
    url: str
    hits: int = 0
    body: dict[str, object] = field(default_factory=dict)
    status: int = 200
    delay: float = 0.3  # long enough for every concurrent request to arrive during the fetch


@asynccontextmanager
async def jwks_server(signing: SigningKey) -> AsyncIterator[JwksServer]:
    state = JwksServer(url="", body=signing.jwks())

    async def handler(request: web.Request) -> web.Response:
        state.hits += 1
        await asyncio.sleep(state.delay)
        return web.json_response(state.body, status=state.status)

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
    try:
        yield state
    finally:
        await runner.cleanup()


def external_key(tmp_path: Path, kind: str = "ec") -> SigningKey:
    path = tmp_path / f"idp-{kind}.pem"
    path.write_bytes(private_pem(generate_private_key(kind)))
    return load_signing_key(path)


def token_for(signing: SigningKey, subject: str) -> str:
    return TokenIssuer(signing, ISSUER, SERVICE, 300).issue(subject, []).token


def settings(root: Path, jwks_url: str) -> Settings:
    return Settings(
        storage={"filesystem": {"root": root}},
        observability={"access_log": False},
        auth={
            "mode": "token",
            "token": {
                "jwks_url": jwks_url,
                "realm": "https://idp.example/token",
                "issuer": ISSUER,
                "service": SERVICE,
            },
        },
    )


async def gather_gets(
    client: httpx.AsyncClient, n: int, headers: Callable[[int], dict[str, str]]
) -> list[httpx.Response]:
    return await asyncio.gather(*(client.get("/v2/", headers=headers(i)) for i in range(n)))


async def test_concurrent_first_requests_wait_for_one_jwks_fetch(tmp_path: Path) -> None:
    signing = external_key(tmp_path)
    async with jwks_server(signing) as idp:
        app = create_app(settings(tmp_path / "data", idp.url))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://registry") as c:
            # A different token per request (the verifier caches verified tokens).
            tokens = [token_for(signing, f"robot-{i}") for i in range(20)]
            responses = await gather_gets(
                c, len(tokens), lambda i: {"Authorization": f"Bearer {tokens[i]}"}
            )
            assert [r.status_code for r in responses] == [200] * len(tokens)
            assert idp.hits == 1
            # Warm: later requests use the fetched keys without asking again.
            r = await c.get("/v2/", headers={"Authorization": f"Bearer {token_for(signing, 'x')}"})
            assert r.status_code == 200 and idp.hits == 1
            # No token at all is still a challenge, not a fetch.
            r = await c.get("/v2/")
            assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer ")
            assert idp.hits == 1


async def test_a_failed_fetch_is_shared_too_and_the_old_keys_stay(tmp_path: Path) -> None:
    signing = external_key(tmp_path, "rsa")
    async with jwks_server(signing) as idp:
        idp.status = 500
        keys = KeySet(url=idp.url, refresh_seconds=10)
        verifier = TokenVerifier(keys, frozenset({"RS256"}), ISSUER, SERVICE)
        tokens = [token_for(signing, f"robot-{i}") for i in range(10)]
        results = await asyncio.gather(
            *(verifier.verify(t) for t in tokens), return_exceptions=True
        )
        assert all(isinstance(r, Exception) for r in results)
        assert idp.hits == 1  # one failed fetch for all ten, not ten

        # The issuer recovers; once the refresh is due, one fetch brings the keys.
        idp.status = 200
        keys._fetched -= 10
        verified = await asyncio.gather(*(verifier.verify(t) for t in tokens))
        assert [v.subject for v in verified] == [f"robot-{i}" for i in range(10)]
        assert idp.hits == 2

        # The issuer fails again: the keys already fetched keep working.
        idp.status = 500
        keys._fetched -= 10
        fresh = token_for(signing, "later")
        assert (await verifier.verify(fresh)).subject == "later"
        assert idp.hits == 3


async def test_a_cancelled_waiter_does_not_cancel_the_fetch(tmp_path: Path) -> None:
    signing = external_key(tmp_path)
    async with jwks_server(signing) as idp:
        keys = KeySet(url=idp.url)
        verifier = TokenVerifier(keys, frozenset({"ES256"}), ISSUER, SERVICE)
        first = asyncio.create_task(verifier.verify(token_for(signing, "gone")))
        await asyncio.sleep(0.05)  # the fetch is under way
        second = asyncio.create_task(verifier.verify(token_for(signing, "stays")))
        await asyncio.sleep(0.05)
        first.cancel()  # its client went away
        assert (await second).subject == "stays"
        assert first.cancelled()
        assert idp.hits == 1


async def test_oversized_jwks_is_refused(tmp_path: Path) -> None:
    signing = external_key(tmp_path)
    async with jwks_server(signing) as idp:
        idp.delay = 0
        idp.body = {**signing.jwks(), "padding": "x" * (KeySet.MAX_JWKS_BYTES + 1)}
        keys = KeySet(url=idp.url)
        assert await keys.keys(signing.kid) == []
        assert idp.hits == 1
        idp.body = signing.jwks()  # the same key, served small, is accepted
        keys._fetched -= KeySet.MIN_REFETCH_SECONDS
        assert [k.key.public_numbers() for k in await keys.keys(signing.kid)] == [
            signing.public.public_numbers()
        ]
        assert idp.hits == 2
