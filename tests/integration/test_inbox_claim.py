"""The inbox's claim against the real PostgreSQL (and the broker for a duplicate)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

import psycopg
import pytest
import sqlalchemy
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

from relay._embedded import EmbeddedBroker
from relay.errors import MissingEventIdError
from relay.inbox import Claim, Inbox, event_id_of
from relay.inbox import migrate as inbox_migrate
from tests.support import consume, run_cli

BLOCKED_TIMEOUT_S = 10.0


@pytest.fixture
def inbox_url(database_url: str) -> str:
    inbox_migrate.apply(database_url)
    return database_url


def processed(url: str, consumer: str = "billing") -> set[uuid.UUID]:
    with psycopg.connect(url) as conn:
        return {
            row[0]
            for row in conn.execute("SELECT event_id FROM inbox WHERE consumer = %s", (consumer,))
        }


def test_first_claim_wins_and_a_later_duplicate_is_refused(inbox_url: str) -> None:
    inbox = Inbox(consumer="billing")
    event = uuid.uuid4()
    with psycopg.connect(inbox_url) as conn:
        assert inbox.claim(conn, event) is True
        conn.commit()
        assert inbox.claim(conn, event) is False
        assert inbox.claim(conn, str(event)) is False
        conn.commit()
    assert processed(inbox_url) == {event}


def test_consumers_claim_independently(inbox_url: str) -> None:
    event = uuid.uuid4()
    with psycopg.connect(inbox_url) as conn:
        assert Inbox(consumer="billing").claim(conn, event)
        assert Inbox(consumer="shipping").claim(conn, event)
        assert not Inbox(consumer="billing").claim(conn, event)


def test_a_rolled_back_claim_is_released(inbox_url: str) -> None:
    inbox = Inbox(consumer="billing")
    event = uuid.uuid4()
    with psycopg.connect(inbox_url) as conn:
        assert inbox.claim(conn, event)
        conn.rollback()
        assert processed(inbox_url) == set()
        assert inbox.claim(conn, event)
        conn.commit()
    assert processed(inbox_url) == {event}


def test_claim_never_commits_on_its_own(inbox_url: str) -> None:
    inbox = Inbox(consumer="billing")
    with psycopg.connect(inbox_url) as conn:
        inbox.claim(conn, uuid.uuid4())
        assert conn.info.transaction_status is psycopg.pq.TransactionStatus.INTRANS
        assert processed(inbox_url) == set()


def wait_until_blocked(url: str, application_name: str) -> None:
    deadline = time.monotonic() + BLOCKED_TIMEOUT_S
    with psycopg.connect(url, autocommit=True) as watcher:
        while time.monotonic() < deadline:
            row = watcher.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE application_name = %s",
                (application_name,),
            ).fetchone()
            if row and row[0] == "Lock":
                return
            time.sleep(0.02)
    pytest.fail("the second claim never waited for the first")


@pytest.mark.parametrize("first_commits", [True, False])
def test_concurrent_claims_from_two_connections_have_exactly_one_winner(
    inbox_url: str, *, first_commits: bool
) -> None:
    inbox = Inbox(consumer="billing")
    event = uuid.uuid4()
    outcome: list[bool] = []
    with (
        psycopg.connect(inbox_url) as first,
        psycopg.connect(inbox_url, application_name="second-claimer") as second,
    ):
        assert inbox.claim(first, event)

        def claim_second() -> None:
            outcome.append(inbox.claim(second, event))
            second.commit()

        thread = threading.Thread(target=claim_second)
        thread.start()
        wait_until_blocked(inbox_url, "second-claimer")
        if first_commits:
            first.commit()
        else:
            first.rollback()
        thread.join(BLOCKED_TIMEOUT_S)
    # Exactly one of the two transactions holds the claim at the end.
    assert outcome == [not first_commits]
    assert processed(inbox_url) == {event}


def test_many_ids_in_one_round_trip_in_input_order(inbox_url: str) -> None:
    inbox = Inbox(consumer="billing")
    seen, new = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(inbox_url) as conn:
        inbox.claim(conn, seen)
        conn.commit()
        claims: list[Claim | uuid.UUID] = [Claim(new, "orders", 3, 41), seen, new]
        assert inbox.claim_many(conn, claims) == [True, False, False]
        assert inbox.claim_many(conn, []) == []
        conn.commit()
        row = conn.execute(
            'SELECT topic, partition, "offset" FROM inbox WHERE event_id = %s', (new,)
        ).fetchone()
    assert row == ("orders", 3, 41)


def test_sqlalchemy_session(inbox_url: str) -> None:
    engine = sqlalchemy.create_engine(inbox_url.replace("postgresql://", "postgresql+psycopg://"))
    event = uuid.uuid4()
    inbox = Inbox(consumer="billing")
    try:
        with Session(engine) as session, session.begin():
            assert inbox.claim(session, event)
        with Session(engine) as session, session.begin():
            assert not inbox.claim(session, event)
    finally:
        engine.dispose()
    assert processed(inbox_url) == {event}


async def test_psycopg_async_connection(inbox_url: str) -> None:
    inbox = Inbox(consumer="billing")
    event = uuid.uuid4()
    async with await psycopg.AsyncConnection.connect(inbox_url) as conn:
        async with conn.transaction():
            assert await inbox.claim_async(conn, event)
        async with conn.transaction():
            assert await inbox.claim_many_async(conn, [event, uuid.uuid4()]) == [False, True]


async def test_sqlalchemy_async_session(inbox_url: str) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    engine = create_async_engine(inbox_url.replace("postgresql://", "postgresql+psycopg://"))
    inbox = Inbox(consumer="billing")
    event = uuid.uuid4()
    try:
        async with AsyncSession(engine) as session, session.begin():
            assert await inbox.claim_async(session, event)
        async with AsyncSession(engine) as session, session.begin():
            assert not await inbox.claim_async(session, event)
    finally:
        await engine.dispose()


async def test_the_wrong_kind_of_connection_is_refused(inbox_url: str) -> None:
    inbox = Inbox(consumer="billing")
    async with await psycopg.AsyncConnection.connect(inbox_url) as conn:
        with pytest.raises(TypeError, match="claim_async"):
            inbox.claim(conn, uuid.uuid4())  # type: ignore[arg-type]
    with psycopg.connect(inbox_url) as sync_conn, pytest.raises(TypeError, match="use claim "):
        await inbox.claim_async(sync_conn, uuid.uuid4())  # type: ignore[arg-type]


async def test_a_record_delivered_twice_changes_the_business_table_once(
    inbox_url: str, broker: EmbeddedBroker, topic: str
) -> None:
    with psycopg.connect(inbox_url) as conn:
        conn.execute("CREATE TABLE balances (account text PRIMARY KEY, cents bigint NOT NULL)")
        conn.commit()
    event_id = str(uuid.uuid4()).encode()
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await producer.start()
    try:
        for _ in range(2):  # a hand-made duplicate: the same event published twice
            await producer.send_and_wait(
                topic, b'{"account":"a","cents":250}', key=b"a", headers=[("event_id", event_id)]
            )
    finally:
        await producer.stop()
    records = await consume(broker.bootstrap_servers, [topic], expected=2)
    assert len(records) == 2
    inbox = Inbox(consumer="billing")
    with psycopg.connect(inbox_url) as conn:
        for record in records:
            with conn.transaction():
                if inbox.claim(conn, event_id_of(list(record.headers.items()))):
                    change = json.loads(record.value or b"")
                    conn.execute(
                        "INSERT INTO balances VALUES (%(account)s, %(cents)s) ON CONFLICT "
                        "(account) DO UPDATE SET cents = balances.cents + excluded.cents",
                        change,
                    )
        assert conn.execute("SELECT cents FROM balances").fetchall() == [(250,)]


def test_a_record_without_event_id_is_a_typed_error() -> None:
    with pytest.raises(MissingEventIdError, match="no event_id header"):
        event_id_of([("traceparent", b"00-...")])
    with pytest.raises(MissingEventIdError, match="not a UUID"):
        event_id_of([("event_id", b"42")])
    assert event_id_of([("event_id", b"1b4e28ba-2fa1-11d2-883f-0016d3cca427")]) == uuid.UUID(
        "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    )


# --- the migration kit ------------------------------------------------------------------


def test_migrate_is_idempotent_and_safe_twice_at_once(database_url: str) -> None:
    results: list[int] = []

    def run() -> None:
        results.append(len(inbox_migrate.apply(database_url)))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == [0, len(inbox_migrate.migrations())]
    assert inbox_migrate.apply(database_url) == []


def test_migrate_cli_and_print_sql_build_the_same_schema(
    database_url: str, empty_database_url: str
) -> None:
    done = run_cli("inbox", "migrate", "--database-url", database_url, "--schema", "svc")
    assert done.returncode == 0, done.stderr
    assert "applied inbox 0001_inbox" in done.stdout
    again = run_cli("inbox", "migrate", "--database-url", database_url, "--schema", "svc")
    assert again.returncode == 0
    assert "up to date" in again.stdout
    printed = run_cli("inbox", "migrate", "--print-sql", "--schema", "svc")
    assert printed.returncode == 0, printed.stderr
    with psycopg.connect(empty_database_url) as conn:
        conn.execute(printed.stdout.encode())
        conn.commit()

    def tables(url: str) -> list[tuple[str, ...]]:
        with psycopg.connect(url) as conn:
            return conn.execute(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'svc' ORDER BY 1, 2"
            ).fetchall()

    assert tables(database_url) == tables(empty_database_url)
    assert inbox_migrate.apply(empty_database_url, "svc") == []


def test_migrate_without_a_url_is_one_line_and_exit_2() -> None:
    done = run_cli("inbox", "migrate")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "outbox-relay: error: no database URL: set --database-url or RELAY_DATABASE_URL"
    )


def test_a_bad_table_name_is_refused_before_connecting() -> None:
    done = run_cli("inbox", "migrate", "--table", "in box", "--print-sql")
    assert done.returncode == 2
    assert "invalid --table" in done.stderr


# --- status and purge -------------------------------------------------------------------


@pytest.fixture
def old_and_new_claims(inbox_url: str) -> str:
    with psycopg.connect(inbox_url) as conn:
        Inbox(consumer="billing").claim_many(conn, [uuid.uuid4() for _ in range(7)])
        conn.execute(
            "UPDATE inbox SET processed_at = now() - interval '10 days' WHERE event_id IN "
            "(SELECT event_id FROM inbox LIMIT 5)"
        )
        Inbox(consumer="shipping").claim(conn, uuid.uuid4())
        conn.commit()
    return inbox_url


def test_status_counts_per_consumer(old_and_new_claims: str) -> None:
    done = run_cli("inbox", "status", "--json", "--database-url", old_and_new_claims)
    assert done.returncode == 0, done.stderr
    consumers = {c["consumer"]: c for c in json.loads(done.stdout)["consumers"]}
    assert consumers["billing"]["processed_last_hour"] == 2
    assert consumers["shipping"]["processed_last_minute"] == 1
    assert consumers["billing"]["parked"] == 0
    text = run_cli("inbox", "status", "--database-url", old_and_new_claims)
    assert text.returncode == 0
    assert "billing" in text.stdout


def test_purge_deletes_only_old_ids_in_short_batches(old_and_new_claims: str) -> None:
    done = run_cli(
        "inbox", "purge", "--older-than", "7d", "--chunk-size", "2", "--json",
        "--database-url", old_and_new_claims,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"deleted": 5}
    assert len(processed(old_and_new_claims)) == 2


def test_purge_with_a_bad_duration_is_exit_2(inbox_url: str) -> None:
    done = run_cli("inbox", "purge", "--older-than", "soon", "--database-url", inbox_url)
    assert done.returncode == 2
    assert "--older-than" in done.stderr


def test_a_thousand_new_ids_in_one_statement(inbox_url: str) -> None:
    async def main() -> list[bool]:
        async with await psycopg.AsyncConnection.connect(inbox_url) as conn:
            return await Inbox(consumer="bulk").claim_many_async(
                conn, [uuid.uuid4() for _ in range(1000)]
            )

    assert all(asyncio.run(main()))


def test_a_consumer_role_can_claim_but_not_delete_claims(inbox_url: str) -> None:
    with psycopg.connect(inbox_url, autocommit=True) as conn:
        conn.execute("CREATE ROLE billing_svc LOGIN")
    try:
        done = run_cli("inbox", "grants", "--role", "billing_svc", "--apply",
                       "--database-url", inbox_url)  # fmt: skip
        assert done.returncode == 0, done.stderr
        as_role = psycopg.conninfo.make_conninfo(inbox_url, user="billing_svc")
        with psycopg.connect(as_role) as conn:
            assert Inbox(consumer="billing").claim(conn, uuid.uuid4())
            conn.commit()
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DELETE FROM inbox")
    finally:
        with psycopg.connect(inbox_url, autocommit=True) as conn:
            conn.execute("DROP OWNED BY billing_svc")
            conn.execute("DROP ROLE billing_svc")


@pytest.mark.parametrize("commit", [True, False])
async def test_claim_and_publish_commit_or_roll_back_together(
    inbox_url: str, *, commit: bool
) -> None:
    from relay.producer import Event, publish_async

    event = uuid.uuid4()
    async with await psycopg.AsyncConnection.connect(inbox_url) as conn:
        assert await Inbox(consumer="billing").claim_async(conn, event)
        await publish_async(conn, Event("invoices", {"for": str(event)}, key="a"))
        await (conn.commit() if commit else conn.rollback())
    with psycopg.connect(inbox_url) as conn:
        outbox = conn.execute("SELECT count(*) FROM outbox WHERE topic = 'invoices'").fetchone()
    assert outbox == (1 if commit else 0,)
    assert processed(inbox_url) == ({event} if commit else set())
