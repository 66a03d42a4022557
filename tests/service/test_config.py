"""Settings: defaults, YAML file, environment and flags, in that order of precedence."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from berth import cli
from berth.config import Settings, load_settings
from berth.config_docs import render

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_defaults_serve_local_directory_on_loopback() -> None:
    s = Settings()
    assert (s.http.host, s.http.port) == ("127.0.0.1", 5000)
    assert s.storage.driver == "filesystem"
    assert s.storage.filesystem.root == Path("data")


def test_yaml_then_env_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("http:\n  port: 6000\n  host: 0.0.0.0\nstorage:\n  delete_enabled: false\n")
    s = load_settings(config)
    assert (s.http.port, s.http.host, s.storage.delete_enabled) == (6000, "0.0.0.0", False)

    monkeypatch.setenv("BERTH_HTTP__PORT", "7000")
    assert load_settings(config).http.port == 7000

    args = cli.build_parser().parse_args(["serve", "--config", str(config), "--port", "8000"])
    s = cli.settings_from_args(args, cli.SERVE_FLAGS)
    assert s.http.port == 8000
    assert s.http.host == "0.0.0.0"


def test_unknown_keys_are_errors(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("storage:\n  filesystem:\n    rooot: /tmp\n")
    with pytest.raises(ValidationError):
        load_settings(config)


def test_missing_config_file_is_a_clear_cli_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_help_explains_environment_variables(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--storage-root", "--config", "BERTH_"):
        assert flag in out


def test_configuration_docs_match_the_model() -> None:
    assert DOCS.read_text() == render(), (
        "docs/configuration.md is stale: run "
        "`.venv/bin/python -m berth.config_docs > docs/configuration.md`"
    )
