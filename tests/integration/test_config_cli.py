from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support import run_cli


def _shown(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.returncode == 0, result.stderr
    shown: dict[str, object] = json.loads(result.stdout)
    return shown


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("outbox-relay: error: "), lines[0]
    return lines[0]


def test_config_show_applies_flag_over_environment_over_file_over_default(
    tmp_path: Path,
) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('batch_size = 10\nmode = "wal"\ntable = "events"\n[kafka]\nlinger_ms = 50\n')
    result = run_cli(
        "config", "show", "--json", "--config", str(path), "--batch-size", "30",
        env={"RELAY_BATCH_SIZE": "20", "RELAY_MODE": "poll", "RELAY_KAFKA_LINGER_MS": "7"},
    )  # fmt: skip
    shown = _shown(result)
    assert shown["batch_size"] == 30
    assert shown["mode"] == "poll"
    assert shown["kafka_linger_ms"] == 7
    assert shown["table"] == "events"
    assert shown["schema"] == "public"


def test_the_config_file_can_come_from_relay_config(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('schema = "sales"\n')
    shown = _shown(run_cli("config", "show", "--json", env={"RELAY_CONFIG": str(path)}))
    assert shown["schema"] == "sales"


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('[kafka]\nsasl_password = "sasl-s3cret"\n')
    result = run_cli(
        "config", "show", "--config", str(path),
        "--database-url", "postgresql://relay:db-s3cret@db/app",
        env={"RELAY_KAFKA_SSL_PASSWORD": "key-s3cret", "RELAY_KAFKA_SASL_USERNAME": "relay"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout
    assert 'database_url = "postgresql://relay:***@db/app"' in result.stdout
    assert 'kafka_sasl_password = "***"' in result.stdout
    assert 'kafka_ssl_password = "***"' in result.stdout
    assert 'kafka_sasl_username = "relay"' in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "toml", "message"),
    [
        ((), {}, "batch_sise = 5\n", "unknown setting 'batch_sise' in"),
        ((), {}, "[database]\nurl = 'x'\n", "unknown setting 'database' in"),
        ((), {"RELAY_BATCHSIZE": "5"}, None, "unknown setting 'RELAY_BATCHSIZE' in the env"),
        ((), {"RELAY_BATCH_SIZE": "abc"}, None, "invalid batch_size in $RELAY_BATCH_SIZE"),
        (("--mode", "foo"), {}, None, "invalid mode in --mode: expected one of poll, wal"),
        ((), {}, "poll_interval = 'often'\n", "invalid poll_interval in"),
        ((), {}, "mode = \n", "is not valid TOML"),
        (("--database-url", "postgresql://app:pw@[db/app"), {}, None, "malformed database URL"),
        ((), {"RELAY_DATABASE_URL": "mysql://app@db/app"}, None, "malformed database URL"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_code_2(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], toml: str | None, message: str
) -> None:
    if toml is not None:
        path = tmp_path / "relay.toml"
        path.write_text(toml)
        args = (*args, "--config", str(path))
    result = run_cli("config", "show", *args, env=env)
    assert result.returncode == 2
    assert message in _one_error_line(result)
    assert result.stdout == ""


def test_bad_configuration_stops_every_command_before_it_does_anything() -> None:
    result = run_cli("migrate", env={"RELAY_BATCH_SIZE": "abc"})
    assert result.returncode == 2
    assert "invalid batch_size" in _one_error_line(result)


def test_an_unreachable_database_is_one_line_and_exit_code_1() -> None:
    result = run_cli("migrate", env={"RELAY_DATABASE_URL": "postgresql://app@127.0.0.1:1/app"})
    assert result.returncode == 1
    assert "cannot connect to the database" in _one_error_line(result)


def test_an_unknown_flag_is_a_click_usage_error_with_exit_code_2() -> None:
    result = run_cli("config", "show", "--bogus")
    assert result.returncode == 2
    assert "No such option '--bogus'" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_and_version() -> None:
    help_result = run_cli("--help")
    assert help_result.returncode == 0
    assert "migrate" in help_result.stdout
    assert "grants" in help_result.stdout
    version = run_cli("--version")
    assert version.returncode == 0
    assert "0.1.0" in version.stdout
