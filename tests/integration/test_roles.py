from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors

from relay._embedded import EmbeddedBroker, EmbeddedPostgres
from relay.producer import Event, publish_many
from tests.support import run_cli


@dataclasses.dataclass(frozen=True)
class Roles:
    relay: str
    app: str


def _drop_roles(url: str, names: list[str]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE database = current_database()"
        )
        for name in names:
            conn.execute(f'DROP OWNED BY "{name}"')
            conn.execute(f'DROP ROLE "{name}"')


@pytest.fixture
def roles(database_url: str) -> Iterator[Roles]:
    suffix = uuid.uuid4().hex[:8]
    # Role names are cluster-wide: unique per test, and one needs quoting.
    created = Roles(relay=f"relay_{suffix}", app=f"Orders service {suffix}")
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name in (created.relay, created.app):
            conn.execute(f'CREATE ROLE "{name}" LOGIN')
    yield created
    _drop_roles(database_url, [created.relay, created.app])


def _grant(database_url: str, roles: Roles, *extra: str) -> None:
    result = run_cli(
        "grants", "--relay-role", roles.relay, "--app-role", roles.app,
        "--apply", "--database-url", database_url, *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "granted on public.outbox"


def _denied(conn: psycopg.Connection[tuple[object, ...]], statement: str) -> bool:
    try:
        with conn.transaction():
            conn.execute(statement)
    except errors.InsufficientPrivilege:
        return True
    return False


def test_services_may_only_insert_events(database_url: str, roles: Roles) -> None:
    _grant(database_url, roles)
    with psycopg.connect(database_url, user=roles.app) as app:
        row = app.execute("SELECT outbox_publish('orders', 'k1', '{\"a\": 1}')").fetchone()
        assert row is not None
        assert isinstance(row[0], uuid.UUID)
        app.execute("SELECT outbox_publish_bytes('orders', 'k1', '\\x00'::bytea)")
        app.execute("INSERT INTO outbox (topic, payload) VALUES ('orders', '{}')")
        publish_many(app, [Event("orders", {"n": n}) for n in range(3)])
        app.commit()

        assert _denied(app, "SELECT * FROM outbox")
        assert _denied(app, "SELECT payload FROM outbox")
        assert _denied(app, "UPDATE outbox SET state = 'sent'")
        assert _denied(app, "DELETE FROM outbox")
        assert _denied(app, "TRUNCATE outbox")
        assert _denied(app, "SELECT * FROM outbox_migrations")
    with psycopg.connect(database_url) as owner:
        assert owner.execute("SELECT count(*) FROM outbox").fetchone() == (6,)


def test_the_relay_may_read_mark_and_delete_but_not_insert(database_url: str, roles: Roles) -> None:
    _grant(database_url, roles)
    with psycopg.connect(database_url) as owner:
        owner.execute("SELECT outbox_publish('orders', 'k', '{}') FROM generate_series(1, 3)")
    with psycopg.connect(database_url, user=roles.relay) as relay:
        rows = relay.execute(
            "SELECT id, payload FROM outbox WHERE state = 'pending' ORDER BY id FOR UPDATE"
        ).fetchall()
        assert len(rows) == 3
        relay.execute(
            "UPDATE outbox SET state = 'sent', sent_at = now() WHERE id = %s", (rows[0][0],)
        )
        relay.execute("DELETE FROM outbox WHERE id = %s", (rows[1][0],))
        assert relay.execute("SELECT version FROM outbox_migrations").fetchall() != []
        relay.commit()

        assert _denied(relay, "INSERT INTO outbox (topic) VALUES ('orders')")
        assert _denied(relay, "SELECT outbox_publish('orders', 'k', '{}')")
        assert _denied(relay, "TRUNCATE outbox")
        # Poll mode gets no REPLICATION.
        assert _denied(relay, "SELECT pg_create_logical_replication_slot('poll_slot', 'pgoutput')")
    with psycopg.connect(database_url) as owner:
        states = owner.execute("SELECT state FROM outbox ORDER BY id").fetchall()
    assert states == [("sent",), ("pending",)]


def test_wal_mode_gives_the_relay_replication_and_the_publication(
    database_url: str, roles: Roles
) -> None:
    _grant(database_url, roles, "--mode", "wal")
    with psycopg.connect(database_url, user=roles.relay, autocommit=True) as relay:
        relay.execute("SELECT pg_create_logical_replication_slot('wal_slot', 'pgoutput')")
        with psycopg.connect(database_url, user=roles.app) as app:
            app.execute("SELECT outbox_publish('orders', 'k', '{}')")
        # synchronous_commit is off on the test cluster: decoding sees the commit once the
        # WAL writer flushed it, a few hundred milliseconds later.
        deadline = time.monotonic() + 30
        changes = 0
        while changes < 3 and time.monotonic() < deadline:
            row = relay.execute(
                "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('wal_slot', NULL,"
                " NULL, 'proto_version', '1', 'publication_names', 'outbox_pub')"
            ).fetchone()
            assert row is not None
            changes = row[0]
            time.sleep(0.1)
        assert changes >= 3  # BEGIN, RELATION, INSERT, COMMIT
        # Without --message-prefix the relay never inserts.
        assert _denied(relay, "INSERT INTO outbox (topic) VALUES ('orders')")


def test_wal_mode_with_messages_lets_the_relay_park_them_as_rows(
    database_url: str, roles: Roles
) -> None:
    _grant(database_url, roles, "--mode", "wal", "--message-prefix", "outbox")
    with psycopg.connect(database_url, user=roles.relay) as relay:
        relay.execute(
            "INSERT INTO outbox (topic, payload_bytes, state, parked_at)"
            " VALUES ('orders', 'x', 'parked', now())"
            " ON CONFLICT (event_id) DO NOTHING"
        )
        relay.commit()


def test_doctor_finds_nothing_missing_for_the_relay_role_after_grants(
    database_url: str, roles: Roles, broker: EmbeddedBroker
) -> None:
    _grant(database_url, roles, "--mode", "wal")
    relay_url = database_url.replace("postgres@", f"{roles.relay}@", 1)
    result = run_cli(
        "doctor", "--json", "--mode", "wal", "--database-url", relay_url,
        "--bootstrap-servers", broker.bootstrap_servers,
    )  # fmt: skip
    checks = {check["name"]: check["level"] for check in json.loads(result.stdout)["checks"]}
    for name in (
        "migrations current",
        "replication privilege",
        "heartbeat",
        "role privileges",
        "leadership lease",
    ):
        assert checks[name] == "ok", (name, result.stdout)


def _acls(url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            """
            SELECT 'table', relacl::text FROM pg_class WHERE oid = 'outbox'::regclass
            UNION ALL
            SELECT 'column ' || attname, attacl::text FROM pg_attribute
            WHERE attrelid = 'outbox'::regclass AND attacl IS NOT NULL
            UNION ALL
            SELECT 'function ' || proname, proacl::text FROM pg_proc
            WHERE proname LIKE 'outbox_publish%'
            UNION ALL
            SELECT 'schema', nspacl::text FROM pg_namespace WHERE nspname = 'public'
            ORDER BY 1
            """
        ).fetchall()


def test_printed_grants_applied_with_psql_give_the_same_privileges(
    postgres: EmbeddedPostgres, database_url: str, roles: Roles, request: pytest.FixtureRequest
) -> None:
    printed = run_cli("grants", "--relay-role", roles.relay, "--app-role", roles.app)
    assert printed.returncode == 0, printed.stderr
    assert f'"{roles.app}"' in printed.stdout  # quoted, not formatted in
    other_url: str = request.getfixturevalue("empty_database_url")
    assert run_cli("migrate", "--database-url", other_url).returncode == 0
    subprocess.run(
        [str(postgres.bindir / "psql"), "-v", "ON_ERROR_STOP=1", "-q", "-1", "-d", other_url],
        input=printed.stdout,
        text=True,
        check=True,
        capture_output=True,
    )
    try:
        _grant(database_url, roles)
        assert _acls(other_url) == _acls(database_url)
        assert roles.app in str(_acls(database_url))
    finally:
        with psycopg.connect(other_url, autocommit=True) as conn:
            for name in (roles.relay, roles.app):
                conn.execute(f'DROP OWNED BY "{name}"')


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("outbox-relay: error: ")
    return lines[0]


def test_grants_to_a_missing_role_fail_with_one_line(database_url: str) -> None:
    result = run_cli(
        "grants", "--app-role", "no_such_role", "--apply", "--database-url", database_url
    )
    assert result.returncode == 1
    assert 'role "no_such_role" does not exist' in _one_error_line(result)


def test_grants_without_a_role_are_a_usage_error() -> None:
    result = run_cli("grants")
    assert result.returncode == 2
    assert "--relay-role" in _one_error_line(result)


def test_grants_on_an_unreachable_database_fail_with_one_line() -> None:
    result = run_cli(
        "grants", "--app-role", "app", "--apply", "--database-url",
        "postgresql://nobody@127.0.0.1:1/none",
    )  # fmt: skip
    assert result.returncode == 1
    assert "cannot connect to the database" in _one_error_line(result)


FORGERIES = [
    "INSERT INTO outbox (topic, key, state) VALUES ('orders', 'k', 'parked')",
    "INSERT INTO outbox (topic, key, state) VALUES ('orders', 'k', 'sent')",
    "INSERT INTO outbox (topic, attempts) VALUES ('orders', 99)",
    "INSERT INTO outbox (topic, sent_at) VALUES ('orders', now())",
    "INSERT INTO outbox (topic, created_at) VALUES ('orders', '2000-01-01')",
    "INSERT INTO outbox (id, topic) OVERRIDING SYSTEM VALUE VALUES (-5, 'orders')",
]


@pytest.mark.parametrize("statement", FORGERIES)
def test_services_cannot_set_the_relays_columns(
    database_url: str, roles: Roles, statement: str
) -> None:
    _grant(database_url, roles)
    with psycopg.connect(database_url, user=roles.app) as app:
        assert _denied(app, statement)


@pytest.mark.parametrize("statement", FORGERIES)
def test_a_table_wide_insert_from_older_grants_still_cannot_forge(
    database_url: str, roles: Roles, statement: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as owner:
        owner.execute(f'GRANT INSERT ON outbox TO "{roles.app}"')
        owner.execute("SELECT outbox_publish('orders', 'first', '{}')")
    with (
        psycopg.connect(database_url, user=roles.app, autocommit=True) as app,
        contextlib.suppress(errors.InsufficientPrivilege),
    ):
        app.execute(statement)
    with psycopg.connect(database_url) as owner:
        rows = owner.execute(
            "SELECT id, state, attempts, sent_at, created_at > now() - interval '1 hour'"
            " FROM outbox ORDER BY id"
        ).fetchall()
    # Refused, or written with the relay's defaults after the owner's event.
    assert len(rows) in (1, 2)
    for _id, state, attempts, sent_at, recent in rows:
        assert (state, attempts, sent_at, recent) == ("pending", 0, None, True)
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    assert all(r[0] > 0 for r in rows)


def test_grants_replace_an_older_table_wide_insert(database_url: str, roles: Roles) -> None:
    with psycopg.connect(database_url, autocommit=True) as owner:
        owner.execute(f'GRANT INSERT ON outbox TO "{roles.app}"')
    _grant(database_url, roles)
    with psycopg.connect(database_url, user=roles.app) as app:
        assert _denied(app, "INSERT INTO outbox (topic, state) VALUES ('orders', 'sent')")


def test_with_a_message_prefix_only_the_granted_roles_may_emit_table_less_events(
    database_url: str, roles: Roles
) -> None:
    stranger = f"stranger_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as owner:
        owner.execute(f'CREATE ROLE "{stranger}" LOGIN')
    try:
        emit = "SELECT pg_logical_emit_message(true, 'outbox', '{\"credit\": 1000000}')"
        with psycopg.connect(database_url, user=stranger) as before:
            assert not _denied(before, emit)  # PostgreSQL's default: every role may
        _grant(database_url, roles, "--mode", "wal", "--message-prefix", "outbox")
        with psycopg.connect(database_url, user=stranger) as conn:
            assert _denied(conn, emit)
            assert _denied(conn, "SELECT pg_logical_emit_message(false, 'outbox', 'x'::bytea)")
        for role in (roles.app, roles.relay):
            with psycopg.connect(database_url, user=role) as conn:
                assert not _denied(conn, emit)
    finally:
        _drop_roles(database_url, [stranger])


def test_restricting_emit_message_without_a_superuser_fails_with_one_line_and_grants_nothing(
    database_url: str, roles: Roles
) -> None:
    with psycopg.connect(database_url, autocommit=True) as owner:
        owner.execute(f'ALTER ROLE "{roles.relay}" CREATEROLE')
        tables = "outbox, outbox_migrations, outbox_leader"
        owner.execute(f'GRANT ALL ON {tables} TO "{roles.relay}" WITH GRANT OPTION')
    as_relay = database_url.replace("postgres@", f"{roles.relay}@", 1)
    result = run_cli(
        "grants", "--app-role", roles.app, "--mode", "wal", "--message-prefix", "outbox",
        "--apply", "--database-url", as_relay,
    )  # fmt: skip
    assert result.returncode == 1
    assert "needs a superuser" in _one_error_line(result)
    with psycopg.connect(database_url, user=roles.app) as app:
        assert _denied(app, "INSERT INTO outbox (topic) VALUES ('orders')")


def test_doctor_flags_a_role_that_may_insert_more_than_events(
    database_url: str, roles: Roles, broker: EmbeddedBroker
) -> None:
    def doctor() -> dict[str, dict[str, str]]:
        result = run_cli(
            "doctor", "--json", "--mode", "wal", "--message-prefix", "outbox",
            "--database-url", database_url, "--bootstrap-servers", broker.bootstrap_servers,
        )  # fmt: skip
        return {check["name"]: check for check in json.loads(result.stdout)["checks"]}

    with psycopg.connect(database_url, autocommit=True) as owner:
        owner.execute(f'GRANT INSERT ON outbox TO "{roles.app}"')
    before = doctor()
    assert before["event writers"]["level"] == "warn"
    assert roles.app in before["event writers"]["detail"]
    assert before["table-less event emitters"]["level"] == "warn"
    _grant(database_url, roles, "--mode", "wal", "--message-prefix", "outbox")
    after = doctor()
    assert after["event writers"]["level"] == "ok", after["event writers"]
    assert after["table-less event emitters"]["level"] == "ok"
