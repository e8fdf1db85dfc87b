from __future__ import annotations

import concurrent.futures
import subprocess

import psycopg

from relay import migrate
from relay._embedded import EmbeddedPostgres
from relay.inbox import migrate as inbox_migrate
from tests.support import run_cli


def _schema_dump(postgres: EmbeddedPostgres, url: str) -> str:
    dump = subprocess.run(
        [str(postgres.bindir / "pg_dump"), "--schema-only", "--no-owner", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # pg_dump 15+ prints a random \restrict token on some builds; it is not schema.
    return "\n".join(line for line in dump.splitlines() if not line.startswith("\\"))


def test_migrate_creates_the_outbox_and_a_second_run_changes_nothing(
    empty_database_url: str, postgres: EmbeddedPostgres
) -> None:
    first = run_cli("migrate", "--database-url", empty_database_url)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_outbox" in first.stdout
    before = _schema_dump(postgres, empty_database_url)

    second = run_cli("migrate", "--database-url", empty_database_url)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
    assert _schema_dump(postgres, empty_database_url) == before

    with psycopg.connect(empty_database_url) as conn:
        row = conn.execute("SELECT public.outbox_publish('orders', 'k1', '{}')").fetchone()
        assert row is not None


def test_two_concurrent_migrations_both_exit_zero(empty_database_url: str) -> None:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(lambda _: run_cli("migrate", "--database-url", empty_database_url), range(2))
        )
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    applied = [r for r in results if "applied 0001_outbox" in r.stdout]
    assert len(applied) == 1
    with psycopg.connect(empty_database_url) as conn:
        versions = conn.execute("SELECT version FROM public.outbox_migrations").fetchall()
    assert versions == [(m.version,) for m in migrate.migrations()]


def test_print_sql_applied_with_psql_gives_the_same_schema(
    postgres: EmbeddedPostgres, empty_database_url: str, database_url: str
) -> None:
    # database_url was migrated by `migrate`; empty_database_url gets the printed SQL.
    script = run_cli("migrate", "--print-sql")
    assert script.returncode == 0, script.stderr
    subprocess.run(
        [
            str(postgres.bindir / "psql"),
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-1",
            "-d",
            empty_database_url,
        ],
        input=script.stdout,
        text=True,
        check=True,
        capture_output=True,
    )
    assert _schema_dump(postgres, empty_database_url) == _schema_dump(postgres, database_url)


def test_print_sql_quotes_configured_identifiers() -> None:
    result = run_cli("migrate", "--print-sql", "--schema", "Events", "--table", "outbox_v2")
    assert result.returncode == 0, result.stderr
    assert 'CREATE TABLE "Events"."outbox_v2"' in result.stdout
    assert 'CREATE SCHEMA IF NOT EXISTS "Events"' in result.stdout


def test_unreachable_database_is_one_line_and_non_zero() -> None:
    result = run_cli("migrate", "--database-url", "postgresql://nobody@127.0.0.1:1/none")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("outbox-relay: error: cannot connect to the database")


def test_a_failed_first_migration_leaves_no_version_table_behind(database_url: str) -> None:
    # public.outbox's lease table is public.outbox_leader: an outbox of that name collides.
    result = run_cli(
        *("migrate", "--database-url", database_url),
        *("--table", "outbox_leader", "--publication", "p2"),
    )
    assert result.returncode == 1, result.stdout
    assert result.stderr.strip().splitlines() == [
        (
            'outbox-relay: error: migration failed: relation "outbox_leader" already exists, and '
            "not as this outbox's (its version table does not record it): choose another --table "
            "or --schema, or rename what holds the name"
        )
    ]
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT to_regclass('public.outbox_leader_migrations')").fetchone()
    assert row == (None,)


def _relations(url: str, schema: str) -> list[tuple[str]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s ORDER BY 1",
            (schema,),
        ).fetchall()


def test_an_inbox_whose_name_is_taken_is_one_line_and_leaves_nothing(database_url: str) -> None:
    # The inbox's parked records go to <table>_parked: an inbox named inbox_parked
    # collides with the default inbox's. Before, inbox_parked_migrations stayed behind.
    assert [m.version for m in inbox_migrate.apply(database_url)] == [1]
    before = _relations(database_url, "public")
    result = run_cli("inbox", "migrate", "--database-url", database_url, "--table", "inbox_parked")
    assert result.returncode == 1, result.stdout
    assert _relations(database_url, "public") == before
    assert result.stderr.strip().splitlines() == [
        (
            'outbox-relay: error: inbox migration failed: relation "inbox_parked" already exists, '
            "and not as this inbox's (its version table does not record it): choose another "
            "--table or --schema, or rename what holds the name"
        )
    ]
    assert inbox_migrate.apply(database_url) == []  # the second apply of the real one: nothing
