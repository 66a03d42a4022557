"""What recording registry events costs a manifest PUT (``make bench BENCH_ARGS=--events``).

Three Berth servers on storage of their own: events off; one endpoint whose receiver accepts
everything; one whose receiver hangs on every request (a push must not wait for it). Each runs
the manifest PUT workload of run.py (300 PUTs, 16 concurrent), alternating, best of the rounds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from event_receiver import Receiver

SETUPS = ("events off", "events on, receiver accepting", "events on, receiver hanging")


def notifications(receiver: Receiver) -> dict[str, Any]:
    endpoint = {"name": "bench", "url": receiver.url, "timeout_seconds": 30}
    return {"notifications": {"endpoints": [endpoint]}}


async def compare(
    start: Callable[[str, dict[str, Any]], Any],
    prepare: Callable[[Any], Awaitable[Any]],
    manifest_put: Callable[[Any, Any], Awaitable[float]],
    rounds: int,
) -> list[tuple[str, float]]:
    """``start(label, extra config)`` starts a server, ``prepare(server)`` makes its fixture."""
    accepting, hanging = Receiver().start(), Receiver().start()
    hanging.mode = "hang"
    try:
        configs: list[dict[str, Any]] = [{}, notifications(accepting), notifications(hanging)]
        servers = [start(label, config) for label, config in zip(SETUPS, configs, strict=True)]
        try:
            fixtures = [await prepare(s) for s in servers]
            best = [0.0] * len(servers)
            for _ in range(rounds):
                for i, (server, fixture) in enumerate(zip(servers, fixtures, strict=True)):
                    best[i] = max(best[i], await manifest_put(server, fixture))
        finally:
            for s in servers:
                s.stop()
    finally:
        hanging.release()
        accepting.close()
        hanging.close()
    return list(zip(SETUPS, best, strict=True))


def table(title: str, results: list[tuple[str, float]]) -> str:
    off = results[0][1]
    out = [
        f"### manifest PUT with registry events: {title}",
        "",
        "| setup | manifest PUT, 16 concurrent (req/s) | vs events off |",
        "|---|---:|---:|",
    ]
    for label, value in results:
        out.append(f"| {label} | {value:.1f} | {value / off if off else 0:.2f}x |")
    return "\n".join(out) + "\n"
