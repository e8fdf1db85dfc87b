"""Two outboxes in one database: each migrates and relays on its own (WAL mode)."""

from __future__ import annotations

import psycopg

from relay.config import Settings
from tests.integration.test_wal_relay import running_relay, wal_settings
from tests.oracle import assert_delivered, outbox_rows
from tests.support import consume, run_cli


def _objects_of(url: str, schema: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = %(schema)s"
            " UNION ALL SELECT c.relname::text FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(schema)s"
            " UNION ALL SELECT p.proname::text FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %(schema)s",
            {"schema": schema},
        ).fetchall()
    return [row[0] for row in rows]


def test_a_second_outbox_on_the_taken_publication_says_which_flag_and_leaves_nothing(
    database_url: str,
) -> None:
    # database_url has public.outbox with the default publication outbox_pub.
    result = run_cli("migrate", "--database-url", database_url, "--schema", "billing")
    assert result.returncode == 1, result.stdout
    assert result.stderr.strip().splitlines() == [
        (
            "outbox-relay: error: publication outbox_pub exists already (it publishes "
            "public.outbox): give this outbox its own with --publication "
            "(e.g. --publication billing_outbox_pub), and its relay its own --slot-name"
        )
    ]
    assert _objects_of(database_url, "billing") == []


async def test_two_outboxes_in_one_database_each_reach_their_topics(
    settings: Settings, topic: str
) -> None:
    url = settings.database_url
    migrated = run_cli(
        "migrate", "--database-url", url, "--schema", "billing", "--publication", "billing_pub"
    )
    assert migrated.returncode == 0, migrated.stderr
    first = wal_settings(settings)
    second = wal_settings(settings, schema="billing", publication="billing_pub")
    billing_topic = f"{topic}-billing"
    async with running_relay(first), running_relay(second):
        with psycopg.connect(url) as conn:
            for n in range(20):
                conn.execute(
                    "SELECT public.outbox_publish(%s, %s, jsonb_build_object('n', %s::int))",
                    (topic, f"k{n % 3}", n),
                )
                conn.execute(
                    "SELECT billing.outbox_publish(%s, %s, jsonb_build_object('n', %s::int))",
                    (billing_topic, f"k{n % 3}", n),
                )
            conn.commit()
        records = await consume(settings.bootstrap_servers, [topic, billing_topic], expected=40)
    expected = outbox_rows(url) + outbox_rows(url, table="billing.outbox")
    assert {e.topic for e in expected} == {topic, billing_topic}
    assert_delivered(records, expected, max_duplicates=0)


def test_a_relay_of_the_second_outbox_on_the_first_ones_publication_is_told_which_flags(
    database_url: str,
) -> None:
    migrated = run_cli(
        "migrate", "--database-url", database_url, "--schema", "billing", "--publication", "b_pub"
    )
    assert migrated.returncode == 0, migrated.stderr
    with psycopg.connect(database_url) as conn:
        before = conn.execute("SELECT pubname, tablename FROM pg_publication_tables").fetchall()
    # Forgot --publication for the relay: outbox_pub is public.outbox's.
    result = run_cli(
        "run",
        *("--database-url", database_url, "--schema", "billing", "--mode", "wal"),
        *("--slot-name", "billing_relay", "--bootstrap-servers", "127.0.0.1:1"),
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "outbox-relay: error: publication outbox_pub does not include billing.outbox: if it is "
        "another outbox's, set --publication and --slot-name to this outbox's own, "
        "else ALTER PUBLICATION outbox_pub ADD TABLE billing.outbox"
    )
    with psycopg.connect(database_url) as conn:
        after = conn.execute("SELECT pubname, tablename FROM pg_publication_tables").fetchall()
        slots = conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = current_database()"
        ).fetchall()
    assert (sorted(after), slots) == (sorted(before), [])


def test_doctor_for_the_second_outbox_on_the_first_ones_publication_names_the_flags(
    database_url: str,
) -> None:
    migrated = run_cli(
        "migrate", "--database-url", database_url, "--schema", "billing", "--publication", "b_pub"
    )
    assert migrated.returncode == 0, migrated.stderr
    result = run_cli(
        *("doctor", "--database-url", database_url, "--schema", "billing", "--mode", "wal"),
        *("--slot-name", "billing_relay", "--bootstrap-servers", "127.0.0.1:1"),
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    at = next(n for n, line in enumerate(lines) if line.startswith("fail  publication"))
    assert "outbox_pub does not include billing.outbox" in lines[at]
    assert lines[at + 1].split("fix: ")[1] == (
        "if it is another outbox's, give this one its own: --publication and --slot-name; "
        "else ALTER PUBLICATION outbox_pub ADD TABLE billing.outbox"
    )
