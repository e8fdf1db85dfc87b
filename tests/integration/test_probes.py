"""/readyz tells the truth: broker capabilities, standbys, an idle broker, refusals named.

Each test runs ``outbox-relay run`` in a subprocess against the real PostgreSQL and
broker and reads /readyz and the JSON log as an operator would.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from relay import decisions
from relay._embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from relay.config import Settings
from tests.integration.test_http import HttpRelay, running_relay, wait_until
from tests.support import run_cli


def readyz(relay: HttpRelay) -> tuple[int, str]:
    return relay.get("/readyz")


def test_default_settings_against_a_broker_without_idempotence_name_the_flag(
    settings: Settings, tmp_path: Path
) -> None:
    """The test broker has no InitProducerId: the one line says so, and what to do."""
    started = time.monotonic()
    with running_relay(settings, tmp_path, "--kafka-enable-idempotence", "true") as relay:
        wait_until(
            "the idempotence error line",
            lambda: any(
                line.get("level") == "error" and "InitProducerId" in str(line.get("event"))
                for line in relay_lines(relay)
            ),
            timeout_s=30,
        )
        assert time.monotonic() - started < 30
        errors = [line for line in relay_lines(relay) if line.get("level") == "error"]
        assert len(errors) == 1, errors
        message = str(errors[0]["event"])
        assert "--kafka-enable-idempotence false" in message
        assert "duplicates on producer retries" in message
        wait_until("/readyz 503 naming it", lambda: "InitProducerId" in readyz(relay)[1])
        status, body = readyz(relay)
        assert status == 503
        assert body.startswith("not connected to the broker: the broker at ")
        assert "--kafka-enable-idempotence false" in body


def relay_lines(relay: HttpRelay) -> list[dict[str, object]]:
    lines = []
    for text in relay.log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(text))
    return lines


def test_a_standby_with_a_healthy_lock_connection_is_ready(
    settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with running_relay(settings, tmp_path / "a") as leader:
        wait_until("leader ready", lambda: readyz(leader) == (200, "ready\n"))
        with running_relay(settings, tmp_path / "b") as standby:
            wait_until(
                "standing by",
                lambda: any(
                    line.get("event") == "standing by: another relay is the leader"
                    for line in relay_lines(standby)
                ),
            )
            wait_until("standby ready", lambda: readyz(standby) == (200, "ready\n"), 20)


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(port=free_port(), log_file=tmp_path / "broker.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_readyz_follows_an_idle_broker_going_away_and_coming_back(
    settings: Settings, tmp_path: Path, private_broker: EmbeddedBroker
) -> None:
    """Nothing is published: only the relay's own probe can notice."""
    settings = Settings(
        database_url=settings.database_url,
        bootstrap_servers=private_broker.bootstrap_servers,
    )
    with running_relay(settings, tmp_path) as relay:
        wait_until("/readyz 200", lambda: readyz(relay) == (200, "ready\n"))
        private_broker.stop()
        gone = time.monotonic()
        wait_until("/readyz 503", lambda: readyz(relay)[0] == 503, timeout_s=30)
        assert time.monotonic() - gone < 30
        assert readyz(relay)[1].startswith("not connected to the broker: ")
        private_broker.start()
        wait_until("/readyz 200 again", lambda: readyz(relay) == (200, "ready\n"), 30)


def test_a_missing_database_is_named_at_error_level_and_on_readyz(
    settings: Settings, postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=postgres.url_for("no_such_database"),
        bootstrap_servers=settings.bootstrap_servers,
    )
    with running_relay(settings, tmp_path) as relay:
        wait_until("/readyz names it", lambda: "database does not exist" in readyz(relay)[1])
        assert readyz(relay)[0] == 503
        lines = relay_lines(relay)
        assert not any("leadership check failed" in str(line) for line in lines)
        named = [line for line in lines if "database does not exist" in str(line.get("error"))]
        assert named
        assert {line["level"] for line in named} == {"error"}


@pytest.fixture
def password_role(postgres: EmbeddedPostgres) -> Iterator[str]:
    """A role that must give its password (``right``): pg_hba.conf asks it of this one."""
    role = "probe_password_role"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        hba_row = conn.execute("SHOW hba_file").fetchone()
        assert hba_row is not None
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'right'")
    hba = pathlib.Path(hba_row[0])
    original = hba.read_text()
    hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + original)
    try:
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
        yield role
    finally:
        hba.write_text(original)
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_a_wrong_password_is_named(
    settings: Settings, postgres: EmbeddedPostgres, password_role: str, tmp_path: Path
) -> None:
    url = f"postgresql://{password_role}:wrong@127.0.0.1:{postgres.port}/postgres"
    settings = Settings(database_url=url, bootstrap_servers=settings.bootstrap_servers)
    with running_relay(settings, tmp_path) as relay:
        wait_until("/readyz names it", lambda: "authentication failed" in readyz(relay)[1])
        assert readyz(relay)[0] == 503
        errors = [line for line in relay_lines(relay) if line.get("level") == "error"]
        assert any("authentication failed" in str(line.get("error")) for line in errors)


@pytest.mark.parametrize("mode", ["poll", "wal"])
def test_a_standby_with_a_missing_table_exits_2_without_waiting_to_lead(
    empty_database_url: str, broker: EmbeddedBroker, mode: str
) -> None:
    """Another process holds the lock: the setup checks still run, and are fatal."""
    lock_id = decisions.lock_id_for("public", "outbox")
    with psycopg.connect(empty_database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (lock_id,))
        result = run_cli(
            "run", "--mode", mode, "--database-url", empty_database_url,
            "--bootstrap-servers", broker.bootstrap_servers, "--log-format", "json",
            timeout=30,
        )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "outbox-relay: error: table public.outbox does not exist: run outbox-relay migrate"
    )


def test_a_broker_that_accepts_but_never_answers_gets_a_line_before_30_s(
    settings: Settings, tmp_path: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        settings = Settings(
            database_url=settings.database_url,
            bootstrap_servers=f"127.0.0.1:{silent.getsockname()[1]}",
        )
        started = time.monotonic()
        with running_relay(settings, tmp_path, "--kafka-enable-idempotence", "false") as relay:
            wait_until(
                "a line about the silent broker",
                lambda: any(
                    line.get("event") == "kafka has not answered yet; still waiting"
                    for line in relay_lines(relay)
                ),
                timeout_s=25,
            )
            assert time.monotonic() - started < 30
