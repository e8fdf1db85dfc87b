"""WAL mode end to end: real PostgreSQL (wal_level=logical), real broker, real loop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest

from relay.config import Mode, OnSent, Settings
from relay.kafka import KafkaPublisher
from relay.loop import LoopConfig, RelayLoop
from relay.metrics import Metrics
from relay.publisher import Publisher
from relay.slot import slot_status
from relay.wal import WalSource
from relay.wal import _source as wal
from tests.oracle import assert_delivered, outbox_rows
from tests.support import consume


def wal_settings(settings: Settings, **changes: object) -> Settings:
    """WAL-mode settings with a slot name no other test uses (slots are cluster-wide)."""
    slot = f"s_{uuid.uuid4().hex[:12]}"
    values: dict[str, object] = {"heartbeat_interval": 0.5, **changes}
    return dataclasses.replace(settings, mode=Mode.WAL, slot_name=slot, **values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running_relay(
    settings: Settings,
    batch_size: int = 500,
    metrics: Metrics | None = None,
    publisher: Publisher | None = None,
) -> AsyncIterator[WalSource]:
    """A WAL relay loop in this process, publishing to Kafka (or through `publisher`)."""
    source = WalSource(settings, metrics=metrics)
    publisher = publisher or KafkaPublisher(settings)
    await publisher.start()
    await source.start()
    loop = RelayLoop(
        source,
        publisher,
        LoopConfig(batch_size=batch_size, poll_interval_s=0.2, park_after_attempts=3),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop), name="relay")
    try:
        yield source
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await source.stop()
        await publisher.stop()


def insert_events(
    url: str, topic: str, keys: list[str], per_transaction: int = 1, start: int = 0
) -> list[dict[str, object]]:
    """Insert one event per key (in order), `per_transaction` rows per transaction."""
    payloads = []
    with psycopg.connect(url) as conn:
        for n, key in enumerate(keys, start):
            payload = {"n": n, "key": key}
            conn.execute(
                "INSERT INTO outbox (topic, key, payload) VALUES (%s, %s, %s)",
                (topic, key, json.dumps(payload)),
            )
            payloads.append(payload)
            if (n + 1) % per_transaction == 0:
                conn.commit()
        conn.commit()
    return payloads


def states(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall()
    return dict(rows)


async def wait_until(check: object, timeout_s: float = 30.0) -> None:
    assert callable(check)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


async def test_events_arrive_once_in_commit_order_per_key_and_rows_are_marked(
    settings: Settings, topic: str
) -> None:
    settings = wal_settings(settings)
    keys = [f"k{i % 7}" for i in range(300)]
    async with running_relay(settings):
        insert_events(settings.database_url, topic, keys[:150], per_transaction=1)
        insert_events(settings.database_url, topic, keys[150:], per_transaction=25, start=150)
        records = await consume(settings.bootstrap_servers, [topic], expected=300)
        await wait_until(lambda: states(settings.database_url) == {"sent": 300})
    assert len(records) == 300
    assert_delivered(records, outbox_rows(settings.database_url), max_duplicates=0)
    with psycopg.connect(settings.database_url) as conn:
        status = slot_status(conn, settings.slot_name)
    assert status is not None
    assert status.confirmed_flush_lsn is not None


async def test_rows_pending_before_the_slot_exists_are_published_exactly_once(
    settings: Settings, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wal, "SWEEP_CHUNK", 7)  # the table is read in many chunks
    settings = wal_settings(settings)
    insert_events(settings.database_url, topic, [f"k{i % 3}" for i in range(120)], 10)
    with psycopg.connect(settings.database_url) as conn:
        # Rows a poll relay already sent must not go again.
        conn.execute("UPDATE outbox SET state = 'sent', sent_at = now() WHERE id <= 20")
    async with running_relay(settings):
        insert_events(settings.database_url, topic, [f"k{i % 3}" for i in range(30)], 1, 120)
        records = await consume(settings.bootstrap_servers, [topic], expected=130, idle_s=2)
        await wait_until(lambda: states(settings.database_url) == {"sent": 150})
    numbers = sorted(json.loads(r.value or b"")["n"] for r in records)
    assert numbers == list(range(20, 150))
    # The rows sent before are not expected: a copy of one would be "unexpected".
    assert_delivered(records, outbox_rows(settings.database_url, where="id > 20"), max_duplicates=0)


async def test_table_less_messages_are_relayed(settings: Settings, topic: str) -> None:
    settings = wal_settings(settings, message_prefix="outbox", message_topics=topic)
    explicit_id = str(uuid.uuid4())
    async with running_relay(settings):
        with psycopg.connect(settings.database_url) as conn:
            conn.execute(
                "SELECT pg_logical_emit_message(true, 'outbox', %s)",
                (
                    json.dumps(
                        {
                            "topic": topic,
                            "key": "a",
                            "payload": {"n": 1},
                            "headers": {"traceparent": "00-abc"},
                            "event_type": "Placed",
                        }
                    ),
                ),
            )
            conn.execute(
                "SELECT pg_logical_emit_message(true, 'outbox', %s)",
                (json.dumps({"topic": topic, "key": "a", "payload_base64": "AAEC",
                             "event_id": explicit_id}),),
            )  # fmt: skip
            # Another prefix, and a rolled-back message: never relayed.
            conn.execute("SELECT pg_logical_emit_message(true, 'other', '{}')")
            conn.commit()
            conn.execute(
                "SELECT pg_logical_emit_message(true, 'outbox', %s)",
                (json.dumps({"topic": topic, "payload": {"n": 99}}),),
            )
            conn.rollback()
            # An unreadable envelope is parked in the table, not lost.
            conn.execute("SELECT pg_logical_emit_message(true, 'outbox', 'not json')")
            conn.commit()
        records = await consume(settings.bootstrap_servers, [topic], expected=2, idle_s=2)
        await wait_until(lambda: states(settings.database_url).get("parked") == 1)
    assert [r.value for r in records] == [b'{"n":1}', b"\x00\x01\x02"]
    first, second = records
    assert first.headers["traceparent"] == b"00-abc"
    assert first.headers["event_type"] == b"Placed"
    uuid.UUID(first.event_id)
    assert second.event_id == explicit_id
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT payload_bytes, last_error, event_id::text FROM outbox"
        ).fetchone()
    assert row is not None
    assert bytes(row[0]) == b"not json"
    assert "JSON" in row[1]


async def test_on_sent_delete_removes_rows(settings: Settings, topic: str) -> None:
    settings = wal_settings(settings, on_sent=OnSent.DELETE)
    async with running_relay(settings):
        insert_events(settings.database_url, topic, ["a", "b", "a"], 1)
        records = await consume(settings.bootstrap_servers, [topic], expected=3)
        await wait_until(lambda: states(settings.database_url) == {})
    assert len(records) == 3


def drop_slot_under_the_relay(url: str, slot_name: str) -> None:
    """What an operator (or max_slot_wal_keep_size) does to a slot: it is gone."""
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(50):
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                "WHERE slot_name = %s AND active_pid IS NOT NULL",
                (slot_name,),
            )
            try:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot_name,))
            except psycopg.errors.ObjectInUse:
                continue  # the relay reconnected in between: terminate it again
            return
    raise AssertionError("could not drop the slot")


async def test_a_dropped_slot_is_recreated_without_losing_events(
    settings: Settings, topic: str
) -> None:
    settings = wal_settings(settings)
    keys = [f"k{i % 5}" for i in range(400)]
    async with running_relay(settings, batch_size=50):
        insert_events(settings.database_url, topic, keys[:100], 1)
        await wait_until(lambda: states(settings.database_url).get("sent", 0) >= 50)
        drop_slot_under_the_relay(settings.database_url, settings.slot_name)
        # Written while there is no slot: only the table knows them.
        insert_events(settings.database_url, topic, keys[100:300], 1, 100)
        await wait_until(lambda: states(settings.database_url).get("sent", 0) >= 300)
        insert_events(settings.database_url, topic, keys[300:], 1, 300)
        records = await consume(settings.bootstrap_servers, [topic], expected=400, idle_s=2)
        await wait_until(lambda: states(settings.database_url) == {"sent": 400})
        with psycopg.connect(settings.database_url) as conn:
            status = slot_status(conn, settings.slot_name)
    assert status is not None
    numbers = {json.loads(r.value or b"")["n"] for r in records}
    assert numbers == set(range(400))
    # Duplicates only for the batch in flight when the slot went away.
    assert_delivered(records, outbox_rows(settings.database_url), max_duplicates=100)


async def test_retained_wal_stays_bounded_while_only_other_tables_are_written(
    settings: Settings, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wal, "LAG_REFRESH_S", 0.2)
    settings = wal_settings(settings, heartbeat_interval=0.2)
    metrics = Metrics()
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE busy (id bigint, filler text)")
    async with running_relay(settings, metrics=metrics):
        insert_events(settings.database_url, topic, ["a"], 1)
        await consume(settings.bootstrap_servers, [topic], expected=1, idle_s=0)
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            for _ in range(6):
                # Several MB of WAL per round, none of it for the outbox.
                conn.execute(
                    "INSERT INTO busy SELECT g, repeat('x', 500) FROM generate_series(1, 8000) g"
                )
            written = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
            assert written is not None

            def confirmed_is_recent() -> bool:
                # restart_lsn follows confirmed_flush_lsn at the server's next
                # running-xacts record (every 15 s): confirmed_flush_lsn is ours to move.
                row = conn.execute(
                    "SELECT pg_wal_lsn_diff(%s::pg_lsn, confirmed_flush_lsn) "
                    "FROM pg_replication_slots WHERE slot_name = %s",
                    (written[0], settings.slot_name),
                ).fetchone()
                return row is not None and row[0] <= 0

            await wait_until(confirmed_is_recent, timeout_s=30)
        # The gauge shows what the server keeps for the slot (restart_lsn follows later).
        await wait_until(lambda: metrics.wal_retained_bytes._value.get() > 0)
        assert metrics.wal_lag_seconds._value.get() < 5
