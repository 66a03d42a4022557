"""The ``berth`` command line."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from . import __version__
from .auth import cli as auth_cli
from .config import Settings, load_settings, set_nested

_ENV_HELP = """\
Every setting can also be given in the YAML file passed with --config, or as an environment
variable: BERTH_ followed by the setting's path joined by '__', for example
BERTH_HTTP__PORT=5000, BERTH_STORAGE__FILESYSTEM__ROOT=/var/lib/berth,
BERTH_STORAGE__DELETE_ENABLED=false. Precedence: flags, then environment, then the file.
See docs/configuration.md for every setting.
"""


def _add_common_storage_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML configuration file")
    parser.add_argument(
        "--storage-root",
        metavar="DIR",
        help="directory for the filesystem driver (storage.filesystem.root; default ./data)",
    )
    s3 = parser.add_argument_group(
        "S3 storage",
        "credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
        "AWS_PROFILE, web identity); see docs/storage.md",
    )
    s3.add_argument(
        "--storage",
        choices=["filesystem", "s3"],
        help="storage driver (storage.driver; default filesystem)",
    )
    s3.add_argument("--s3-bucket", metavar="B", help="bucket (storage.s3.bucket)")
    s3.add_argument("--s3-endpoint", metavar="URL", help="S3 endpoint (storage.s3.endpoint_url)")
    s3.add_argument("--s3-region", metavar="R", help="region (storage.s3.region)")
    s3.add_argument(
        "--s3-public-endpoint",
        metavar="URL",
        help="endpoint clients reach, used only to sign redirect URLs "
        "(storage.s3.public_endpoint_url)",
    )
    s3.add_argument(
        "--redirect",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="answer blob GETs with a 307 to a presigned URL (storage.redirect; default on)",
    )


# flag attribute → settings path
SERVE_FLAGS: dict[str, str] = {
    "host": "http.host",
    "port": "http.port",
    "workers": "http.workers",
    "storage_root": "storage.filesystem.root",
    "storage": "storage.driver",
    "s3_bucket": "storage.s3.bucket",
    "s3_endpoint": "storage.s3.endpoint_url",
    "s3_region": "storage.s3.region",
    "s3_public_endpoint": "storage.s3.public_endpoint_url",
    "redirect": "storage.redirect",
    "log_level": "observability.log_level",
    "metrics_port": "observability.metrics_port",
    "shutdown_timeout": "http.shutdown_timeout_seconds",
}
SERVE_FLAGS.update(auth_cli.SERVE_FLAGS)


def settings_from_args(args: argparse.Namespace, flags: dict[str, str]) -> Settings:
    overrides: dict[str, Any] = {}
    for attr, path in flags.items():
        value = getattr(args, attr, None)
        if value is not None:
            set_nested(overrides, path, value)
    return load_settings(args.config, overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .auth.tls import uvicorn_options as tls_options
    from .config import SETTINGS_ENV
    from .gc.background import CONFIG_FILE_ENV
    from .observability.logging import configure_logging
    from .registry.freshness import GENERATION_ENV

    settings = settings_from_args(args, SERVE_FLAGS)
    if settings.http.workers == 0:
        from .cpus import available_cpus

        settings.http.workers = available_cpus()
    obs = settings.observability
    configure_logging(obs.log_level, obs.log_format)
    common: dict[str, Any] = {
        "host": settings.http.host,
        "port": settings.http.port,
        "log_config": None,
        "access_log": False,
        "server_header": False,
        "proxy_headers": False,
        # SIGTERM: stop accepting, let requests in flight (uploads) finish, then exit.
        "timeout_graceful_shutdown": settings.http.shutdown_timeout_seconds,
    }
    tls = settings.http.tls
    common.update(tls_options(tls.cert_file, tls.key_file, tls.reload_check_seconds))
    if obs.metrics and obs.metrics_port is not None:
        _start_metrics_port(settings)
    if settings.http.workers > 1:
        os.environ[SETTINGS_ENV] = settings.model_dump_json()
        # One cache file for all workers (generation and shared entries: freshness.py): a
        # delete in one is seen at once by the others, a link one saw is trusted by all.
        shared = os.environ[GENERATION_ENV] = _generation_file()
        if args.config:
            os.environ[CONFIG_FILE_ENV] = args.config
        try:
            uvicorn.run(
                "berth.app:app_from_environment",
                factory=True,
                workers=settings.http.workers,
                **common,
            )
        finally:  # a few MiB of memory under /dev/shm: not left behind by each run
            with contextlib.suppress(OSError):
                os.unlink(shared)
    else:
        # Imported here only: with several workers this process is the supervisor, which never
        # serves a request, and the app's imports would cost it about 12 MiB.
        from .app import create_app

        uvicorn.run(create_app(settings, config_file=args.config), **common)
    return 0


def _generation_file() -> str:
    import tempfile

    directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
    fd, path = tempfile.mkstemp(prefix="berth-cache-", dir=directory)
    os.close(fd)
    return path


def _start_metrics_port(settings: Settings) -> None:
    """Serve /metrics on observability.metrics_port from this (the supervisor) process; with
    several workers, each scrape gathers every worker's metrics over private Unix sockets."""
    import tempfile

    from .observability.metrics import (
        METRICS_DIR_ENV,
        exposition_source,
        start_metrics_server,
    )

    directory = None
    if settings.http.workers > 1:
        directory = tempfile.mkdtemp(prefix="berth-metrics-")
        os.environ[METRICS_DIR_ENV] = directory
    port = settings.observability.metrics_port
    assert port is not None
    start_metrics_server(settings.http.host, port, exposition_source(directory))


# `berth gc` takes the same storage settings as `berth serve` (whatever flags map to storage.*).
def gc_flags() -> dict[str, str]:
    flags = {k: v for k, v in SERVE_FLAGS.items() if v.startswith("storage.")}
    flags["log_level"] = "observability.log_level"
    return flags


def cmd_gc(args: argparse.Namespace) -> int:
    from .gc.command import run_command

    return run_command(args, settings_from_args(args, gc_flags()))


def cmd_events(args: argparse.Namespace) -> int:
    from .events.command import run_command

    return run_command(args, settings_from_args(args, gc_flags()))


def _command(sub: Any, name: str, *, summary: str, description: str) -> argparse.ArgumentParser:
    """A subcommand whose help ends with how settings come from the environment."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog=_ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="berth",
        description="Berth: an OCI container registry for Kubernetes.",
        epilog=_ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"berth {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = _command(
        sub,
        "serve",
        summary="serve the registry",
        description="Serve the OCI Distribution API (default: 127.0.0.1:5000, storage in ./data).",
    )
    _add_common_storage_flags(serve)
    serve.add_argument("--host", help="address to listen on (http.host; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (http.port; default 5000)")
    serve.add_argument(
        "--workers", type=int, help="worker processes (http.workers; default: one per CPU)"
    )
    serve.add_argument("--log-level", help="log level (observability.log_level; default info)")
    serve.add_argument(
        "--metrics-port",
        type=int,
        help="serve /metrics on this port, not the API port (observability.metrics_port)",
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=float,
        metavar="SECONDS",
        help="after SIGTERM, how long requests in flight may finish "
        "(http.shutdown_timeout_seconds; default 30)",
    )
    auth_cli.add_serve_flags(serve)
    serve.set_defaults(func=cmd_serve)
    auth_cli.add_commands(sub)

    from .gc.command import add_arguments as add_gc_arguments

    gc = _command(
        sub,
        "gc",
        summary="garbage-collect unreferenced blobs and manifests (online: safe while serving)",
        description="Mark everything reachable from tags (index children, referrers, their "
        "blobs), then remove what nothing reaches, plus stale upload sessions. Safe to run while "
        "the registry serves pushes and pulls; see docs/gc.md.",
    )
    _add_common_storage_flags(gc)
    gc.add_argument("--log-level", help="log level (observability.log_level; default info)")
    add_gc_arguments(gc)
    gc.set_defaults(func=cmd_gc)

    from .events.command import add_arguments as add_events_arguments

    events = _command(
        sub,
        "events",
        summary="list pending and dead-lettered registry events; replay dead letters",
        description="Registry events of the configured notification endpoints (docs/events.md).",
    )

    def common(action: argparse.ArgumentParser) -> None:
        _add_common_storage_flags(action)
        action.add_argument("--log-level", help="log level (observability.log_level)")

    add_events_arguments(events, common)
    events.set_defaults(func=cmd_events)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ValidationError, FileNotFoundError, ValueError) as exc:
        print(f"berth: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
