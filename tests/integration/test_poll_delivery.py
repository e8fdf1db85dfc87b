"""Poll mode end to end, without faults: what reaches Kafka, in which order, how fast."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import time
from pathlib import Path

import psycopg
from aiokafka import AIOKafkaProducer

from relay import decisions
from relay._embedded import EmbeddedBroker
from relay.config import OnSent, Settings
from tests.integration.poll_stack import (
    all_sent,
    async_wait_until,
    insert_events,
    payload_n,
    relay_in_process,
    relay_process,
    states,
    wait_until,
)
from tests.oracle import assert_delivered, outbox_rows
from tests.support import consume, run_cli


async def partition_count(bootstrap_servers: str, topic: str) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        return len(await producer.partitions_for(topic))
    finally:
        await producer.stop()


async def test_every_event_arrives_once_per_key_in_order_on_the_keys_partition(
    settings: Settings, topic: str
) -> None:
    total = 5000
    settings = dataclasses.replace(settings, batch_size=500)
    async with relay_in_process(settings):
        # Written in several transactions while the relay runs, and one before.
        for start in range(0, total, 1000):
            await asyncio.to_thread(
                insert_events, settings.database_url, topic, 1000, keys=50, start=start
            )
        await async_wait_until("all sent", all_sent(settings.database_url, total))
    records = await consume(settings.bootstrap_servers, [topic], expected=total)
    assert len(records) == total
    assert len({r.event_id for r in records}) == total
    assert sorted(payload_n(r) for r in records) == list(range(total))
    assert_delivered(records, outbox_rows(settings.database_url), max_duplicates=0)
    partitions = await partition_count(settings.bootstrap_servers, topic)
    assert partitions > 1
    assert len({r.partition for r in records}) > 1
    for record in records:
        assert record.key is not None
        # Kafka's default partitioner: any other producer puts the key in the same place.
        assert record.partition == decisions.partition_for(record.key.encode(), partitions)


async def test_the_record_carries_compact_json_the_headers_and_raw_bytes(
    settings: Settings, topic: str
) -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with psycopg.connect(settings.database_url) as conn:
        conn.execute(
            "SELECT outbox_publish(%s, 'order-1', %s::jsonb, %s::jsonb, 'OrderPlaced', 'order')",
            (
                topic,
                '{"total": 12.5, "items": ["a", "b"], "note": "x, y: z"}',
                json.dumps({"traceparent": traceparent}),
            ),
        )
        conn.execute("SELECT outbox_publish_bytes(%s, NULL, %s)", (topic, b"\x00\x01raw"))
        event_ids = [str(row[0]) for row in conn.execute("SELECT event_id FROM outbox ORDER BY id")]
    async with relay_in_process(settings):
        await async_wait_until("sent", all_sent(settings.database_url, 2))
    records = sorted(
        await consume(settings.bootstrap_servers, [topic], expected=2), key=lambda r: r.key or ""
    )
    raw, json_record = records
    assert json_record.key == "order-1"
    assert json_record.value == b'{"note":"x, y: z","items":["a","b"],"total":12.5}'
    assert json_record.headers == {
        "event_id": event_ids[0].encode(),
        "event_type": b"OrderPlaced",
        "aggregate_type": b"order",
        "traceparent": traceparent.encode(),
    }
    assert raw.key is None
    assert raw.value == b"\x00\x01raw"
    assert raw.headers == {"event_id": event_ids[1].encode()}


async def test_topic_template_routes_by_a_row_field(settings: Settings, topic: str) -> None:
    settings = dataclasses.replace(settings, topic_template=f"{topic}.{{aggregate_type}}")
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("SELECT outbox_publish('ignored', 'k', '{}', NULL, 'Placed', 'order')")
    async with relay_in_process(settings):
        await async_wait_until("sent", all_sent(settings.database_url, 1))
    records = await consume(settings.bootstrap_servers, [f"{topic}.order"], expected=1)
    assert [r.topic for r in records] == [f"{topic}.order"]


async def test_on_sent_delete_removes_the_published_rows(settings: Settings, topic: str) -> None:
    settings = dataclasses.replace(settings, on_sent=OnSent.DELETE)
    insert_events(settings.database_url, topic, 300)
    async with relay_in_process(settings):
        await async_wait_until("rows deleted", lambda: states(settings.database_url) == {})
    records = await consume(settings.bootstrap_servers, [topic], expected=300)
    assert len({r.event_id for r in records}) == 300


async def test_a_notification_wakes_the_relay_long_before_the_poll_interval(
    settings: Settings, topic: str
) -> None:
    settings = dataclasses.replace(settings, poll_interval=60.0)
    async with relay_in_process(settings):
        await asyncio.sleep(1.0)  # idle: the relay is waiting for a notification
        started = time.monotonic()
        await asyncio.to_thread(insert_events, settings.database_url, topic, 1)
        await async_wait_until("sent", all_sent(settings.database_url, 1), timeout_s=20)
        assert time.monotonic() - started < 20


def test_sigterm_exits_zero_promptly_and_leaves_nothing_half_done(
    settings: Settings, topic: str, tmp_path: Path
) -> None:
    insert_events(settings.database_url, topic, 20_000)
    with relay_process(settings, tmp_path / "relay.log", "--batch-size", "500") as relay:
        wait_until("some sent", lambda: states(settings.database_url).get("sent", 0) > 0)
        relay.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert relay.process.wait(20) == 0
        assert time.monotonic() - started < 10
    # Whatever was marked sent reached Kafka; the rest is still pending for the next run.
    sent = states(settings.database_url).get("sent", 0)
    records = asyncio.run(consume(settings.bootstrap_servers, [topic], expected=sent))
    assert {r.event_id for r in records} >= _sent_event_ids(settings.database_url)
    assert relay.logged("relay stopped")


def _sent_event_ids(database_url: str) -> set[str]:
    with psycopg.connect(database_url) as conn:
        return {
            str(row[0]) for row in conn.execute("SELECT event_id FROM outbox WHERE state = 'sent'")
        }


def test_a_database_without_the_outbox_is_one_clear_line_and_exit_2(
    empty_database_url: str, broker: EmbeddedBroker
) -> None:
    result = run_cli(
        "run",
        "--database-url",
        empty_database_url,
        "--bootstrap-servers",
        broker.bootstrap_servers,
        "--log-level",
        "error",
    )
    # A setup error like WAL mode's (exit 2, the config/setup convention), found before
    # leadership so a standby says it too.
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "outbox-relay: error: table public.outbox does not exist: run outbox-relay migrate"
    )


def test_no_database_url_is_a_config_error() -> None:
    result = run_cli("run")
    assert result.returncode == 2
    assert "no database URL" in result.stderr
