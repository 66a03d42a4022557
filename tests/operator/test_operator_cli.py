"""The ``berth-operator`` console script."""

from __future__ import annotations

from importlib.metadata import entry_points

import kopf

from berth_operator.main import DEFAULT_LIVENESS, parse_args


def test_console_script_is_declared() -> None:
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts["berth-operator"] == "berth_operator.main:main"
    assert scripts["berth"] == "berth.cli:main"


def test_arguments() -> None:
    args = parse_args([])
    assert args.namespace == [] and args.liveness == DEFAULT_LIVENESS
    args = parse_args(["-n", "registry", "--namespace", "team-*", "--liveness", "", "--verbose"])
    assert args.namespace == ["registry", "team-*"] and args.liveness == "" and args.verbose


def test_handlers_register_with_kopf() -> None:
    import berth_operator.handlers  # noqa: F401

    registry = kopf.get_default_registry()
    changing = {h.id for h in registry._changing.get_all_handlers()}
    watching = {h.id for h in registry._watching.get_all_handlers()}
    assert {"reconcile_registry", "reconcile_gc"} <= changing
    # No on-delete handler: nothing adds a finalizer (owner references do the cleanup).
    assert not registry._changing.get_all_handlers() or all(
        "delete" not in h.id for h in registry._changing.get_all_handlers()
    )
    assert {"deployment_changed", "gc_job_changed"} <= watching
