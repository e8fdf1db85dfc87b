"""WAL mode's hand-over between the table and the stream, against the real server.

Each test reproduces one finding of issue 9 and fails on the code before the rebuild.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import Iterator

import psycopg
import pytest

from relay import migrate
from relay._embedded import EmbeddedPostgres
from relay.config import Settings
from relay.events import Acknowledgement, FailedEvent, PublishFailure
from relay.wal import WalSource
from relay.wal import _source as wal_source
from tests.integration.test_wal_confirm import fetch_some, fetch_until
from tests.integration.test_wal_relay import (
    insert_events,
    running_relay,
    states,
    wait_until,
    wal_settings,
)
from tests.oracle import assert_delivered, check, outbox_rows
from tests.support import consume

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of the test's own: it is restarted or reconfigured."""
    with EmbeddedPostgres() as private:
        migrate.apply(Settings(database_url=private.url))
        yield private


def terminate(url: str, application_name: str) -> int:
    """pg_terminate_backend of the relay's connections named `application_name`."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        ).fetchall()
    return len(rows)


def write_and_wait(url: str, topic: str) -> None:
    """Insert one event of key ``a`` in a commit that waits for synchronous replication."""
    with psycopg.connect(url) as conn:
        conn.execute("SET synchronous_commit = on")
        conn.execute(
            "INSERT INTO outbox (topic, key, payload) VALUES (%s, 'a', %s)",
            (topic, json.dumps({"n": 1, "key": "a"})),
        )
        conn.commit()  # returns once the wait is cancelled


async def test_sent_events_are_not_published_again_after_a_postgres_restart(
    settings: Settings, topic: str, cluster: EmbeddedPostgres
) -> None:
    """Finding 1: a restart ends the leadership session; the next source must not replay.

    PostgreSQL persists a slot's confirmed position only at some checkpoints, so the
    stream replays what the previous session confirmed; the table says it was sent.
    """
    settings = wal_settings(settings, database_url=cluster.url)
    keys = [f"k{i % 50}" for i in range(1100)]
    async with running_relay(settings, batch_size=100):
        insert_events(cluster.url, topic, keys, per_transaction=10)
        await wait_until(lambda: states(cluster.url) == {"sent": 1100}, 60)
    cluster.stop("fast")
    cluster.start()
    async with running_relay(settings, batch_size=100):  # a fresh source, as run.py builds
        insert_events(cluster.url, topic, keys[:100], per_transaction=10, start=1100)
        await wait_until(lambda: states(cluster.url) == {"sent": 1200}, 60)
    records = await consume(settings.bootstrap_servers, [topic], expected=1200, idle_s=2)
    verdict = check(records, outbox_rows(cluster.url))
    assert verdict.ok, verdict
    assert verdict.duplicates == 0


async def test_a_lagging_relay_keeps_per_key_order_through_an_immediate_restart(
    settings: Settings, topic: str, cluster: EmbeddedPostgres
) -> None:
    """Finding 1 (-m immediate, relay lagging): replayed old rows never go after newer ones."""
    settings = wal_settings(settings, database_url=cluster.url)
    keys = [f"k{i % 100}" for i in range(600)]
    async with running_relay(settings, batch_size=50):
        insert_events(cluster.url, topic, keys[:300], per_transaction=10)
        await wait_until(lambda: states(cluster.url).get("sent", 0) >= 100, 60)
    # The relay is gone mid-backlog; more rows arrive; the server crashes.
    insert_events(cluster.url, topic, keys[300:], per_transaction=10, start=300)
    cluster.stop("immediate")
    cluster.start()
    async with running_relay(settings, batch_size=50):
        # The test cluster runs with synchronous_commit = off: the crash may take the
        # last commits with it. What survived is the outbox.
        total = sum(states(cluster.url).values())
        assert total > 300
        await wait_until(lambda: states(cluster.url) == {"sent": total}, 60)
    records = await consume(settings.bootstrap_servers, [topic], expected=total, idle_s=2)
    assert_delivered(records, outbox_rows(cluster.url))


async def test_a_commit_streamed_before_it_is_visible_is_marked_once_it_is(
    settings: Settings, topic: str, cluster: EmbeddedPostgres
) -> None:
    """Finding 2: the mark matched no row (the commit waited for a standby) and was lost."""
    settings = wal_settings(settings, database_url=cluster.url)
    admin = psycopg.connect(cluster.url, autocommit=True)
    try:
        async with running_relay(settings, batch_size=10):
            insert_events(cluster.url, topic, ["a"])
            await wait_until(lambda: states(cluster.url) == {"sent": 1})
            admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'nosuchstandby'")
            admin.execute("SELECT pg_reload_conf()")
            # The commit waits for a standby that never comes: flushed, decoded, streamed,
            # but invisible to every other session (the test cluster's default is
            # synchronous_commit = off, which waits for nothing).
            committing = threading.Thread(target=write_and_wait, args=(cluster.url, topic))
            committing.start()
            records = await consume(settings.bootstrap_servers, [topic], expected=2, idle_s=1)
            assert len(records) == 2
            await asyncio.sleep(1.5)  # past the mark's own retries
            assert states(cluster.url) == {"sent": 1}  # the waiting row is not visible
            admin.execute(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                "WHERE wait_event = 'SyncRep' AND application_name <> ALL(%s)",
                (["outbox-relay wal", "outbox-relay wal sweep"],),
            )
            committing.join(10)
            assert not committing.is_alive()
            admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
            admin.execute("SELECT pg_reload_conf()")
            await wait_until(lambda: states(cluster.url) == {"sent": 2}, 30)
    finally:
        admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
        admin.execute("SELECT pg_reload_conf()")
        admin.close()
    records = await consume(settings.bootstrap_servers, [topic], expected=2, idle_s=1)
    assert_delivered(records, outbox_rows(cluster.url))


def relay_waits_for_a_lock(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = 'outbox-relay wal' AND wait_event_type = 'Lock'"
        ).fetchone()
    return row is not None and row[0] == 1


async def test_a_commit_that_becomes_visible_during_the_mark_is_not_taken_for_settled(
    settings: Settings, topic: str, cluster: EmbeddedPostgres
) -> None:
    """Chaos seed 2: a mark missed a row whose commit became visible just after it.

    The mark's UPDATE ran in a snapshot that did not see row B's commit yet (streamed,
    not visible); the statement after it, which read which rows exist, did see it, so B
    passed for settled: it stayed pending forever and the slot confirmed past it. Here
    the window is held open: the UPDATE waits for a row lock on A while B's commit
    becomes visible.
    """
    settings = wal_settings(settings, database_url=cluster.url)
    admin = psycopg.connect(cluster.url, autocommit=True)
    locker = psycopg.connect(cluster.url)
    source = WalSource(settings)
    await source.start()
    try:
        insert_events(cluster.url, topic, ["a"])
        admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'nosuchstandby'")
        admin.execute("SELECT pg_reload_conf()")
        committing = threading.Thread(target=write_and_wait, args=(cluster.url, topic))
        committing.start()
        fetched = await fetch_some(source, 2)
        if len(fetched) < 2:
            fetched += await fetch_some(source, 1)
        assert [event.id for event in fetched] == [1, 2]
        locker.execute("SELECT id FROM outbox WHERE id = 1 FOR UPDATE")
        acknowledging = asyncio.create_task(
            source.acknowledge(Acknowledgement(sent=tuple(fetched)))
        )
        await wait_until(lambda: relay_waits_for_a_lock(cluster.url), 10)
        # B's commit becomes visible while the mark's UPDATE waits (in its snapshot B's
        # transaction is still running).
        admin.execute(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
        )
        committing.join(10)
        assert not committing.is_alive()
        admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
        admin.execute("SELECT pg_reload_conf()")
        locker.rollback()
        await asyncio.wait_for(acknowledging, 10)
        await wait_until(lambda: states(cluster.url) == {"sent": 2}, 5)
    finally:
        await source.stop()
        locker.close()
        admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
        admin.execute("SELECT pg_reload_conf()")
        admin.close()


async def test_a_release_during_the_start_up_sweep_does_not_cut_the_sweep_short(
    settings: Settings, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chaos seed 2 at 500 events/s: a release noticed while the start-up sweep still had
    chunks to read took over its state and transaction; the rest of its rows (dropped by
    the stream: the sweep's snapshot saw them) were never published by the running relay.
    """
    monkeypatch.setattr(wal_source, "SWEEP_CHUNK", 20)
    monkeypatch.setattr(wal_source, "PARKED_REFRESH_S", 0.2)
    settings = wal_settings(settings)
    url = settings.database_url
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO outbox (topic, key, payload) VALUES (%s, 'p', %s)",
            (topic, json.dumps({"n": -1, "key": "p"})),
        )
        conn.execute("UPDATE outbox SET state = 'parked', parked_at = now(), last_error = 'x'")
        conn.commit()
    insert_events(url, topic, [f"k{i % 10}" for i in range(100)], per_transaction=10)
    source = WalSource(settings)
    await source.start()
    try:
        first = await fetch_some(source, 5)  # the sweep queued its first chunk only
        await source.acknowledge(Acknowledgement(sent=tuple(first)))
        with psycopg.connect(url) as conn:  # an operator's retry
            conn.execute("UPDATE outbox SET state = 'pending', parked_at = NULL WHERE id = 1")
        await asyncio.sleep(0.3)  # past the parked rows' refresh
        rest = await fetch_until(source, 101 - len(first), timeout_s=10)
    finally:
        await source.stop()
    assert sorted(event.id for event in [*first, *rest]) == list(range(1, 102))
    assert states(url) == {"sent": 101}


async def test_a_release_never_puts_a_keys_newer_rows_ahead_of_its_queued_ones(
    settings: Settings, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chaos seed 2 at 500 events/s: the release sweep went in front of the queue with
    rows the stream had not decoded yet, ahead of older events of the same key still
    queued (decoded before the key was parked): first copies out of order.
    """
    monkeypatch.setattr(wal_source, "PARKED_REFRESH_S", 0.2)
    # One event decoded ahead: the rest of the WAL waits, as it does behind a backlog.
    monkeypatch.setattr(wal_source, "MAX_QUEUED_EVENTS", 1)
    settings = wal_settings(settings)
    url = settings.database_url
    source = WalSource(settings)
    await source.start()
    try:
        insert_events(url, topic, ["k", "k"])  # rows 1 (to be parked) and 2
        poison = await fetch_some(source, 1)
        assert [event.id for event in poison] == [1]
        failure = PublishFailure(error="RecordTooLarge", retriable=False)
        parked = FailedEvent(poison[0], failure, attempts=2, park=True)
        await source.acknowledge(Acknowledgement(sent=(), failed=(parked,)))
        await wait_until(lambda: len(source._queue) == 1)  # row 2, decoded before the park
        insert_events(url, topic, ["k"], start=2)  # row 3: committed, not decoded yet
        with psycopg.connect(url) as conn:  # an operator's retry
            conn.execute("UPDATE outbox SET state = 'pending', parked_at = NULL WHERE id = 1")
        await asyncio.sleep(0.3)  # past the parked rows' refresh
        got = await fetch_until(source, 3, timeout_s=10)
    finally:
        await source.stop()
    assert [event.id for event in got] == [1, 2, 3]


async def test_a_release_reads_a_long_held_key_chunk_by_chunk(
    settings: Settings, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key parked while its service kept writing holds every later row in the table;
    the operator's retry released them all at once, and the release sweep read every
    chunk into memory before queueing any (millions of rows for a hot key parked for an
    hour). It now queues one chunk at a time as the loop takes them, in outbox order."""
    chunk = 50
    monkeypatch.setattr(wal_source, "PARKED_REFRESH_S", 0.2)
    monkeypatch.setattr(wal_source, "SWEEP_CHUNK", chunk)
    settings = wal_settings(settings)
    url = settings.database_url
    source = WalSource(settings)
    await source.start()
    held = 20 * chunk
    try:
        insert_events(url, topic, ["k"])  # row 1, to be parked
        poison = await fetch_some(source, 1)
        failure = PublishFailure(error="RecordTooLarge", retriable=False)
        parked = FailedEvent(poison[0], failure, attempts=2, park=True)
        await source.acknowledge(Acknowledgement(sent=(), failed=(parked,)))
        insert_events(url, topic, ["k"] * held, per_transaction=100, start=1)
        insert_events(url, topic, ["other"], start=held + 1)
        other = await fetch_some(source, 5)  # the held rows stay in the table
        assert [event.key for event in other] == ["other"]
        await source.acknowledge(Acknowledgement(sent=tuple(other)))
        with psycopg.connect(url) as conn:  # the operator's retry
            conn.execute("UPDATE outbox SET state = 'pending', parked_at = NULL WHERE id = 1")
        await asyncio.sleep(0.3)  # past the parked rows' refresh
        got: list[int] = []
        most_queued = 0
        while len(got) < held + 1:
            batch = await fetch_some(source, 10)
            most_queued = max(most_queued, len(source._queue))
            await source.acknowledge(Acknowledgement(sent=tuple(batch)))
            got.extend(event.id for event in batch)
    finally:
        await source.stop()
    assert got == list(range(1, held + 2))
    assert most_queued <= 2 * 10 + chunk, most_queued


async def test_a_release_after_the_sweep_connection_died_still_publishes_the_key(
    settings: Settings, topic: str
) -> None:
    """Finding 4: a dead sweep connection was never replaced: released rows stayed pending."""
    settings = dataclasses.replace(wal_settings(settings), kafka_max_request_size=2000)
    async with running_relay(settings, batch_size=20):
        with psycopg.connect(settings.database_url) as conn:
            for n, (key, size) in enumerate([("a", 10), ("a", 5000), ("a", 10), ("b", 10)]):
                conn.execute(
                    "INSERT INTO outbox (topic, key, payload) VALUES (%s, %s, %s)",
                    (topic, key, json.dumps({"n": n, "pad": "x" * size})),
                )
                conn.commit()
        await wait_until(
            lambda: states(settings.database_url) == {"sent": 2, "parked": 1, "pending": 1}
        )
        assert terminate(settings.database_url, "outbox-relay wal sweep") == 1
        with psycopg.connect(settings.database_url) as conn:
            conn.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, parked_at = NULL, "
                "payload = jsonb_set(payload, '{pad}', '\"y\"') WHERE state = 'parked'"
            )
        await wait_until(lambda: states(settings.database_url) == {"sent": 4}, 30)
        insert_events(settings.database_url, topic, ["a", "b"], start=4)
        await wait_until(lambda: states(settings.database_url) == {"sent": 6}, 30)
    records = await consume(settings.bootstrap_servers, [topic], expected=6, idle_s=1)
    assert_delivered(records, outbox_rows(settings.database_url))


async def test_the_main_connection_terminated_is_replaced(settings: Settings, topic: str) -> None:
    """Finding 4: pg_terminate_backend of the relay's main connection: no wedge."""
    settings = wal_settings(settings)
    async with running_relay(settings, batch_size=20):
        insert_events(settings.database_url, topic, ["a", "b"] * 10)
        await wait_until(lambda: states(settings.database_url) == {"sent": 20})
        assert terminate(settings.database_url, "outbox-relay wal") == 1
        insert_events(settings.database_url, topic, ["a", "b"] * 10, start=20)
        await wait_until(lambda: states(settings.database_url) == {"sent": 40}, 30)
    records = await consume(settings.bootstrap_servers, [topic], expected=40, idle_s=1)
    assert_delivered(records, outbox_rows(settings.database_url))


async def test_a_table_less_message_over_the_payload_limit_is_parked(
    settings: Settings, topic: str
) -> None:
    """Finding 5: parking violated the table's size CHECK, and the stream reconnected forever."""
    settings = wal_settings(settings, message_prefix="outbox")
    content = b"not json " + b"x" * (settings.max_payload_bytes + 10)
    async with running_relay(settings, batch_size=20):
        with psycopg.connect(settings.database_url) as conn:
            conn.execute("SELECT pg_logical_emit_message(true, 'outbox', %s::bytea)", (content,))
            conn.commit()
        insert_events(settings.database_url, topic, ["a"])
        await wait_until(lambda: states(settings.database_url) == {"parked": 1, "sent": 1}, 30)
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT payload_bytes, last_error FROM outbox WHERE state = 'parked'"
        ).fetchone()
    assert row is not None
    parked, reason = row
    assert bytes(parked) == content[: len(parked)]
    assert len(parked) < settings.max_payload_bytes
    assert f"{len(content)} bytes" in reason
    assert "sha256" in reason


async def test_mixed_case_schema_table_and_slot_names_work(settings: Settings, topic: str) -> None:
    """Names are quoted or compared exactly, never folded to lower case (slot names are
    lower case by PostgreSQL's rule)."""
    settings = wal_settings(settings, schema="Sales", table="OutBox", publication="Sales_Pub")
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute('CREATE SCHEMA "Sales"')
    migrate.apply(settings)
    async with running_relay(settings, batch_size=10):
        with psycopg.connect(settings.database_url) as conn:
            for n in range(5):
                conn.execute(
                    'INSERT INTO "Sales"."OutBox" (topic, key, payload) VALUES (%s, %s, %s)',
                    (topic, f"k{n % 2}", json.dumps({"n": n})),
                )
            conn.commit()
        records = await consume(settings.bootstrap_servers, [topic], expected=5, idle_s=1)
    assert_delivered(
        records, outbox_rows(settings.database_url, table='"Sales"."OutBox"', where="true")
    )


async def test_a_row_the_relay_cannot_read_is_parked_and_holds_its_key(
    settings: Settings, topic: str
) -> None:
    """A row whose conversion raises (a creation time Python has no datetime for; JSON
    deeper than Python parses used to be one) used to fail the stream on every reconnect;
    it is parked with the reason, its key's later rows wait."""
    settings = wal_settings(settings)
    async with running_relay(settings, batch_size=10):
        with psycopg.connect(settings.database_url) as conn:
            for n, (key, created_at) in enumerate(
                [("a", "now"), ("a", "infinity"), ("a", "now"), ("b", "now")]
            ):
                conn.execute(
                    "INSERT INTO outbox (topic, key, payload, created_at) "
                    "VALUES (%s, %s, %s, %s::timestamptz)",
                    (topic, key, json.dumps({"n": n}), created_at),
                )
                conn.commit()
        await wait_until(
            lambda: states(settings.database_url) == {"sent": 2, "parked": 1, "pending": 1}
        )
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute("SELECT last_error FROM outbox WHERE state = 'parked'").fetchone()
    assert row is not None
    assert "'infinity'" in row[0]
    records = await consume(settings.bootstrap_servers, [topic], expected=2, idle_s=1)
    assert_delivered(records, outbox_rows(settings.database_url, where="state = 'sent'"))
