"""Bad input, table-driven: every command and the producer API, one line, nothing written.

Each row is (command, its arguments, environment, exit code, a part of the one line).
A new command joins by adding its name to `COMMANDS` (every bad setting is then tried
on it) and its own bad arguments to `ARGUMENTS`. Every case runs against a real
database whose contents are compared before and after: a refused input writes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from relay._embedded import EmbeddedPostgres
from relay.cli import main
from relay.errors import ConfigError, InvalidEventError
from relay.producer import Event, Outbox, publish
from tests.conftest import TEMPLATE
from tests.support import drop_database, run_cli

#: Commands that take the settings (demo starts its own stack and takes none).
COMMANDS: tuple[tuple[str, ...], ...] = (
    ("config", "show"),
    ("migrate",),
    ("grants", "--relay-role", "relay"),
    ("run",),
    ("slot", "status"),
    ("slot", "drop", "--yes"),
    ("status",),
    ("inspect",),
    ("show", str(uuid.UUID(int=1))),
    ("replay", "--all"),
    ("retry", "--all"),
    ("skip", "--all", "--reason", "x"),
    ("purge", "--older-than", "7d"),
    ("doctor",),
)

#: Settings that can never work: (flag or variable, value, part of the line).
BAD_SETTINGS: tuple[tuple[str, str, str], ...] = (
    ("--lock-id", str(2**63), "invalid lock_id in --lock-id: must be at most"),
    ("--http-port", "70000", "invalid http_port in --http-port: must be at most 65535"),
    ("--bootstrap-servers", "", "invalid bootstrap_servers in --bootstrap-servers: expected"),
    ("--bootstrap-servers", "localhost:abc", "expected host:port, got 'localhost:abc'"),
    ("--bootstrap-servers", "kafka:0", "port must be 1-65535"),
    ("--poll-interval", "0", "invalid poll_interval in --poll-interval: must be at least"),
    ("--slot-name", "Outbox_Relay", "invalid slot_name in --slot-name: expected lower-case"),
    ("--table", "t" * 49, "invalid table in --table: at most 48 characters"),
    ("--schema", "pg_x", "invalid schema in --schema: names starting with pg_ are PostgreSQL's"),
    ("RELAY_SHUTDOWN_TIMEOUT", "9" * 400, "invalid shutdown_timeout in $RELAY_SHUTDOWN_TIMEOUT"),
    ("RELAY_HTTP_PORT", "-1", "invalid http_port in $RELAY_HTTP_PORT: must be at least 0"),
    ("RELAY_LOCK_IDD", "5", "unknown setting 'RELAY_LOCK_IDD' in the environment"),
    ("--http-host", "a host", "invalid http_host in --http-host"),
    ("--heartbeat-interval", "0", "invalid heartbeat_interval in --heartbeat-interval"),
    ("--kafka-acks", "2", "invalid kafka_acks in --kafka-acks"),
    ("--message-topics", "ok,a/b", "invalid message_topics in --message-topics: 'a/b' is not"),
    ("--kafka-max-request-size", "10", "invalid kafka_max_request_size in --kafka-max-request"),
    ("RELAY_KAFKA_REQUEST_TIMEOUT_MS", str(2**31), "must be at most 2147483647"),
    ("--batch-size", str(2**63), "invalid batch_size in --batch-size: must be at most"),
)

#: Command-specific bad arguments (click usage errors say "Error:" on their last line).
ARGUMENTS: tuple[tuple[tuple[str, ...], int, str], ...] = (
    (("inspect", "--since", "99999999999d"), 2, "invalid --since"),
    (("inspect", "--since", "yesterday"), 2, "invalid --since"),
    (("inspect", "--state", "bogus"), 2, "Invalid value for '--state'"),
    (("inspect", "--limit", "0"), 2, "Invalid value for '--limit'"),
    (("inspect", "--event-id", "notauuid"), 2, "malformed event id 'notauuid'"),
    (("inspect", "--before-id", "-1"), 2, "Invalid value for '--before-id'"),
    (("purge", "--older-than", "99999999999d"), 2, "longer than 100 years"),
    (("purge", "--older-than", "soon"), 2, "invalid --older-than: malformed duration"),
    (("purge", "--older-than", "7d", "--chunk-size", "0"), 2, "Invalid value for '--chunk-size'"),
    (("replay", "--rate", "0"), 2, "Invalid value for '--rate'"),
    (("replay", "--all", "--to-topic", "bad/topic"), 2, "invalid topic 'bad/topic'"),
    (("replay",), 2, "say which events to replay: --topic, --key, --event-id, --since"),
    (("retry",), 2, "say which events to change: --topic, --key, --event-id, or --all"),
    (("skip", "--reason", "x"), 2, "say which events to change: --topic, --key, --event-id, or"),
    (("skip", "--all"), 2, "Missing option '--reason'"),
    (("retry", "--all", "--topic", "t"), 2, "--all change cannot be combined with filters"),
    (("status", "--max-lag", "soon"), 2, "invalid --max-lag"),
    (("status", "--max-parked", "-1"), 2, "Invalid value for '--max-parked'"),
    (("slot", "drop"), 2, "needs --yes"),
    (("grants",), 2, "no role to grant to"),
    (("show", "notauuid"), 2, "malformed event id 'notauuid'"),
    (("config", "show", "--bogus"), 2, "No such option '--bogus'"),
)


def _setting_args(name: str, value: str) -> tuple[tuple[str, ...], dict[str, str]]:
    if name.startswith("--"):
        return (name, value), {}
    return (), {name: value}


CASES = [
    pytest.param(
        (*command, *_setting_args(name, value)[0]),
        _setting_args(name, value)[1],
        2,
        line,
        id=f"{' '.join(command[:2])} {name}={value[:12]}",
    )
    for command in COMMANDS
    for name, value, line in BAD_SETTINGS
] + [pytest.param(args, {}, code, line, id=" ".join(args)[:40]) for args, code, line in ARGUMENTS]


@pytest.fixture(scope="module")
def database(postgres: EmbeddedPostgres) -> Iterator[str]:
    """One migrated database with a row in it, shared by every case (none may write)."""
    name = f"bad_input_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    url = postgres.url_for(name)
    with psycopg.connect(url) as conn:
        conn.execute("SELECT outbox_publish('orders', 'k', '{\"n\": 1}', '{}')")
    yield url
    drop_database(postgres.url, name)


def snapshot(url: str) -> tuple[Any, ...]:
    """Everything a refused command could have changed."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id, state, attempts, sent_at, topic FROM outbox ORDER BY id"
        ).fetchall()
        relations = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', "
            "'information_schema', 'pg_toast') ORDER BY 1, 2"
        ).fetchall()
        publications = conn.execute("SELECT pubname FROM pg_publication ORDER BY 1").fetchall()
        slots = conn.execute("SELECT slot_name FROM pg_replication_slots ORDER BY 1").fetchall()
    return rows, relations, publications, slots


@pytest.mark.parametrize(("args", "env", "exit_code", "line"), CASES)
def test_bad_input_is_one_line_an_exit_code_and_nothing_written(
    database: str, args: tuple[str, ...], env: dict[str, str], exit_code: int, line: str
) -> None:
    before = snapshot(database)
    env = {"RELAY_DATABASE_URL": database, **env}
    if args[0] == "run":  # a subprocess: a setting let through must not hang the suite
        process = run_cli(*args, env=env, timeout=30)
        code, stdout, stderr = process.returncode, process.stdout, process.stderr
    else:
        result = CliRunner().invoke(main, list(args), env=env)
        assert not isinstance(result.exception, Exception) or isinstance(
            result.exception, SystemExit
        ), result.exception
        code, stdout, stderr = result.exit_code, result.stdout, result.stderr
    assert code == exit_code, stdout + stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    if lines and lines[-1].startswith("Error:"):  # click's usage errors: usage, hint, error
        assert line in lines[-1]
    else:
        assert len(lines) == 1, stderr
        assert lines[0].startswith("outbox-relay: error: ")
        assert line in lines[0]
    assert stdout == ""
    assert snapshot(database) == before


def test_a_toml_file_that_is_not_utf8_is_one_line(database: str, tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_bytes(b'table = "\xff\xfe"\n')
    before = snapshot(database)
    result = CliRunner().invoke(
        main, ["migrate", "--config", str(path)], env={"RELAY_DATABASE_URL": database}
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"outbox-relay: error: config file {path} is not valid TOML: not UTF-8 at byte 9"
    ]
    assert snapshot(database) == before


PRODUCER_CASES = [
    pytest.param(lambda: Event("", {}), InvalidEventError, "topic is empty", id="empty topic"),
    pytest.param(lambda: Event("a b", {}), InvalidEventError, "contains ' '", id="space"),
    pytest.param(lambda: Event("x" * 250, {}), InvalidEventError, "at most 249", id="long"),
    pytest.param(lambda: Event("..", {}), InvalidEventError, "not allowed", id="dotdot"),
    pytest.param(lambda: Event("t", {}, key=5), InvalidEventError, "key", id="int key"),  # type: ignore[arg-type]
    pytest.param(
        lambda: Event("t", {}, headers={"a": 1}),  # type: ignore[dict-item]
        InvalidEventError,
        "header",
        id="int header",
    ),
    pytest.param(
        lambda: Event("t", {}, event_id="x"),  # type: ignore[arg-type]
        InvalidEventError,
        "event_id must be a uuid.UUID",
        id="str event id",
    ),
    pytest.param(lambda: Outbox(table="t" * 49), ConfigError, "invalid outbox table", id="table"),
    pytest.param(lambda: Outbox(schema="a b"), ConfigError, "invalid outbox schema", id="schema"),
    pytest.param(lambda: Outbox(schema="pg_x"), ConfigError, "pg_ are", id="pg_ schema"),
    pytest.param(
        lambda: Event("t", {1: 2}),  # type: ignore[dict-item]
        InvalidEventError,
        "",
        id="int json key",
    ),
    pytest.param(lambda: Event("t", float("nan")), InvalidEventError, "", id="nan payload"),
]


@pytest.mark.parametrize(("make", "error", "message"), PRODUCER_CASES)
def test_bad_producer_input_is_one_line_and_nothing_written(
    database: str, make: Any, error: type[Exception], message: str
) -> None:
    before = snapshot(database)
    with psycopg.connect(database) as conn, pytest.raises(error) as caught:
        publish(conn, make())
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert snapshot(database) == before


def test_the_table_has_at_least_a_hundred_bad_inputs() -> None:
    assert len(CASES) + len(PRODUCER_CASES) >= 100
