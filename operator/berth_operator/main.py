"""``berth-operator``: run the kopf operator for Registry and GarbageCollection resources.

It runs standalone (no kopf peering): deploy exactly one replica with the ``Recreate`` strategy.

kopf and the Kubernetes client come with the ``operator`` extra (``pip install
'berth[operator]'``, as the image does), so they are imported only when the operator runs: a
``berth`` installed without the extra answers ``berth-operator`` with that advice, not with a
traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
import threading
from collections.abc import Sequence

DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"
OPERATOR_PACKAGES = ("kopf", "kubernetes")
MISSING_EXTRA = (
    "berth-operator: the Kubernetes operator needs the `operator` extra ({missing} is not "
    "installed).\nInstall it with: pip install 'berth[operator]'"
)


def missing_operator_packages() -> list[str]:
    """The packages of the ``operator`` extra that cannot be imported here."""
    missing = []
    for name in OPERATOR_PACKAGES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or exc.name.partition(".")[0] != name:
                raise  # the package is there but broken: let that traceback through
            missing.append(name)
    return missing


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
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=None,
        help="Reconcile every resource this often, repairing drift no event reported "
        "(default: $BERTH_OPERATOR_RESYNC_SECONDS or 300; 0 turns it off).",
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
    import kopf

    import berth_operator.handlers  # (registers the handlers)

    berth_operator.handlers.watched_namespaces[:] = list(namespaces)

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
    missing = missing_operator_packages()
    if missing:
        print(MISSING_EXTRA.format(missing=" and ".join(missing)), file=sys.stderr)
        return 2
    import kopf

    log_format = {
        "json": kopf.LogFormat.JSON,
        "plain": kopf.LogFormat.PLAIN,
        "full": kopf.LogFormat.FULL,
    }[args.log_format]
    kopf.configure(verbose=args.verbose, log_format=log_format)
    if not args.verbose:
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if args.resync_seconds is not None:
        os.environ["BERTH_OPERATOR_RESYNC_SECONDS"] = str(args.resync_seconds)
    asyncio.run(run(args.namespace, args.liveness))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
