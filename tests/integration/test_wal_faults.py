"""WAL mode under faults: SIGKILL, broker outage, PostgreSQL restart, poison events."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from relay import migrate
from relay._embedded import EmbeddedBroker, EmbeddedPostgres
from relay.config import Settings
from relay.loop import MAX_PENDING_ACKS
from tests.integration.test_wal_relay import (
    insert_events,
    running_relay,
    states,
    wait_until,
    wal_settings,
)
from tests.oracle import assert_delivered, outbox_rows
from tests.support import REPO, consume

pytestmark = pytest.mark.slow


def start_relay_process(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env |= {
        "RELAY_DATABASE_URL": settings.database_url,
        "RELAY_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "RELAY_MODE": "wal",
        "RELAY_SLOT_NAME": settings.slot_name,
        "RELAY_KAFKA_ENABLE_IDEMPOTENCE": "false",
        "RELAY_BATCH_SIZE": "100",
        "RELAY_LOG_FORMAT": "json",
    }
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "relay", "run"],
            env=env,
            cwd=REPO,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


async def test_sigkill_then_restart_loses_nothing(
    settings: Settings, topic: str, tmp_path: Path
) -> None:
    settings = wal_settings(settings)
    log = tmp_path / "relay.log"
    keys = [f"k{i % 9}" for i in range(1500)]
    relay = start_relay_process(settings, log)
    try:
        insert_events(settings.database_url, topic, keys[:1000], 5)
        await wait_until(lambda: states(settings.database_url).get("sent", 0) >= 200, 60)
        relay.send_signal(signal.SIGKILL)
        relay.wait(10)
        insert_events(settings.database_url, topic, keys[1000:], 5, 1000)
        relay = start_relay_process(settings, log)
        await wait_until(lambda: states(settings.database_url) == {"sent": 1500}, 60)
    finally:
        relay.terminate()
        assert relay.wait(30) == 0, log.read_text()
    records = await consume(settings.bootstrap_servers, [topic], expected=1500, idle_s=2)
    numbers = [json.loads(r.value or b"")["n"] for r in records]
    assert set(numbers) == set(range(1500))
    # Duplicates only from the batches in flight at the kill (RELAY_BATCH_SIZE 100: one
    # publishing, MAX_PENDING_ACKS marking).
    assert_delivered(
        records, outbox_rows(settings.database_url), max_duplicates=100 * (1 + MAX_PENDING_ACKS)
    )


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(log_file=tmp_path / "broker.log") as broker:
        yield broker


async def test_broker_outage_loses_nothing(
    settings: Settings, topic: str, private_broker: EmbeddedBroker
) -> None:
    settings = wal_settings(
        settings,
        bootstrap_servers=private_broker.bootstrap_servers,
        kafka_request_timeout_ms=2000,
    )
    keys = [f"k{i % 4}" for i in range(300)]
    async with running_relay(settings, batch_size=50):
        insert_events(settings.database_url, topic, keys[:100], 1)
        await wait_until(lambda: states(settings.database_url).get("sent", 0) == 100)
        private_broker.pause()
        try:
            insert_events(settings.database_url, topic, keys[100:], 10, 100)
            await asyncio.sleep(3)
            # Nothing is settled without the broker's acknowledgement.
            assert states(settings.database_url) == {"sent": 100, "pending": 200}
        finally:
            private_broker.resume()
        await wait_until(lambda: states(settings.database_url) == {"sent": 300}, 60)
    records = await consume(settings.bootstrap_servers, [topic], expected=300, idle_s=2)
    assert {json.loads(r.value or b"")["n"] for r in records} == set(range(300))
    assert_delivered(records, outbox_rows(settings.database_url))


async def test_postgres_restart_loses_nothing(settings: Settings, topic: str) -> None:
    with EmbeddedPostgres() as cluster:
        migrate.apply(Settings(database_url=cluster.url))
        settings = wal_settings(settings, database_url=cluster.url)
        keys = [f"k{i % 4}" for i in range(300)]
        async with running_relay(settings, batch_size=50):
            insert_events(settings.database_url, topic, keys[:100], 1)
            await wait_until(lambda: states(settings.database_url).get("sent", 0) == 100)
            # In a thread: the relay must keep answering its walsender, which waits
            # for the relay's confirmation before the server can stop.
            await asyncio.to_thread(cluster.restart)
            insert_events(settings.database_url, topic, keys[100:], 10, 100)
            await wait_until(lambda: states(settings.database_url) == {"sent": 300}, 60)
        records = await consume(settings.bootstrap_servers, [topic], expected=300, idle_s=2)
        expected = outbox_rows(settings.database_url)
    assert {json.loads(r.value or b"")["n"] for r in records} == set(range(300))
    assert_delivered(records, expected)


async def test_poison_event_is_parked_and_its_key_waits_until_released(
    settings: Settings, topic: str
) -> None:
    settings = dataclasses.replace(wal_settings(settings), kafka_max_request_size=2000)
    async with running_relay(settings, batch_size=20):
        with psycopg.connect(settings.database_url) as conn:
            for n, (key, size) in enumerate(
                [("a", 10), ("b", 10), ("a", 5000), ("a", 10), ("b", 10), ("c", 10)]
            ):
                conn.execute(
                    "INSERT INTO outbox (topic, key, payload) VALUES (%s, %s, %s)",
                    (topic, key, json.dumps({"n": n, "pad": "x" * size})),
                )
                conn.commit()
        await wait_until(
            lambda: states(settings.database_url) == {"sent": 4, "parked": 1, "pending": 1}
        )
        records = await consume(settings.bootstrap_servers, [topic], expected=4, idle_s=1)
        assert sorted(json.loads(r.value or b"")["n"] for r in records) == [0, 1, 4, 5]
        # The operator makes the event fit and releases it: it goes, then the one behind it.
        with psycopg.connect(settings.database_url) as conn:
            conn.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, parked_at = NULL, "
                "payload = jsonb_set(payload, '{pad}', '\"y\"') WHERE state = 'parked'"
            )
        await wait_until(lambda: states(settings.database_url) == {"sent": 6}, 30)
    records = await consume(settings.bootstrap_servers, [topic], expected=6, idle_s=1)
    assert_delivered(records, outbox_rows(settings.database_url), max_duplicates=0)


async def test_a_table_less_poison_event_is_parked_as_a_row_and_its_key_waits(
    settings: Settings, topic: str
) -> None:
    settings = dataclasses.replace(
        wal_settings(settings, message_prefix="outbox", message_topics=topic),
        kafka_max_request_size=2000,
    )

    def emit(conn: psycopg.Connection[tuple[object, ...]], n: int, pad: int) -> None:
        envelope = {"topic": topic, "key": "a", "payload": {"n": n, "pad": "x" * pad}}
        conn.execute("SELECT pg_logical_emit_message(true, 'outbox', %s)", (json.dumps(envelope),))
        conn.commit()

    async with running_relay(settings, batch_size=20):
        with psycopg.connect(settings.database_url) as conn:
            emit(conn, 0, 10)
            emit(conn, 1, 5000)  # too large: parked after three attempts
            emit(conn, 2, 10)  # waits behind it, as a pending row
        await wait_until(lambda: states(settings.database_url) == {"parked": 1, "pending": 1})
        with psycopg.connect(settings.database_url) as conn:
            conn.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, parked_at = NULL, "
                "payload_bytes = convert_to('{\"n\":1}', 'UTF8') WHERE state = 'parked'"
            )
        await wait_until(lambda: states(settings.database_url) == {"sent": 2}, 30)
        records = await consume(settings.bootstrap_servers, [topic], expected=3, idle_s=1)
    assert [json.loads(r.value or b"")["n"] for r in records] == [0, 1, 2]
    assert len({r.event_id for r in records}) == 3
