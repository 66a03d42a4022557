"""``berth-operator``: run the kopf operator for Registry and GarbageCollection resources.

It runs standalone (no kopf peering): deploy exactly one replica with the ``Recreate`` strategy.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
from collections.abc import Sequence

import kopf

DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="berth-operator", description="Kubernetes operator for Berth registries."
    )
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="Namespace to watch (repeatable; glob patterns allowed). Default: all namespaces.",
    )
    parser.add_argument(
        "--liveness",
        default=DEFAULT_LIVENESS,
        help=f"Liveness endpoint URL (default {DEFAULT_LIVENESS}; empty to disable).",
    )
    parser.add_argument("--verbose", action="store_true", help="Debug logging.")
    parser.add_argument(
        "--log-format", choices=["json", "plain", "full"], default="json", help="Log format."
    )
    return parser.parse_args(argv)


async def run(
    namespaces: Sequence[str] = (),
    liveness: str | None = DEFAULT_LIVENESS,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
) -> None:
    """The operator's main coroutine (also what the tests run)."""
    import berth_operator.handlers  # noqa: F401  (registers the handlers)

    await kopf.operator(
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        standalone=True,
        liveness_endpoint=liveness or None,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log_format = {
        "json": kopf.LogFormat.JSON,
        "plain": kopf.LogFormat.PLAIN,
        "full": kopf.LogFormat.FULL,
    }[args.log_format]
    kopf.configure(verbose=args.verbose, log_format=log_format)
    if not args.verbose:
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    asyncio.run(run(args.namespace, args.liveness))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
