"""Issue 10, finding 4: a topic that does not exist fails fast and is parked, alone.

With topic creation off (``--kafka-auto-create-topics false``, as a broker with
``auto.create.topics.enable=false`` behaves, the norm on MSK and Confluent Cloud), aiokafka
alone waits ``request_timeout_ms`` for the missing topic's metadata, counts it retriable and
the relay rebuilt its producer and rewound: every topic crawled at a batch per 30 s. Now the
relay's own metadata request, with ``allow_auto_topic_creation`` false, learns at once that
the topic is unknown: its events are charged and parked, their keys held, the rest flows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import psycopg
import pytest
from aiokafka import AIOKafkaClient, AIOKafkaProducer
from aiokafka.protocol.metadata import MetadataRequest

from relay.config import Settings
from relay.kafka import KafkaPublisher
from relay.run import Relay
from tests.integration.poll_stack import async_wait_until, states
from tests.integration.test_wal_relay import wal_settings
from tests.oracle import assert_delivered, outbox_rows
from tests.support import consume

KEYS = 10
EVENTS = 100
#: Rows whose topic does not exist: the first event of keys k0 and k1.
MISSING_ROWS = (0, 1)
PARK_AFTER = 3
#: Far below the 30 s aiokafka waits for a missing topic's metadata.
PROMPT_S = 10.0


async def create_topic(bootstrap_servers: str, topic: str) -> None:
    """Create `topic` the way a producer with auto-creation does (a metadata request)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        await producer.partitions_for(topic)
    finally:
        await producer.stop()


async def topic_error(bootstrap_servers: str, topic: str) -> int:
    """The error code a metadata request (creating nothing) gives `topic`: 0 when it exists."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers)
    await client.bootstrap()
    try:
        node_id = client.get_random_node()
        response = await client.send(
            node_id, MetadataRequest([topic], allow_auto_topic_creation=False)
        )
    finally:
        await client.close()
    errors = {answer[1]: answer[0] for answer in response.topics}
    code: int = errors[topic]
    return code


@pytest.mark.parametrize("mode", ["poll", "wal"])
async def test_a_missing_topic_is_parked_fast_and_every_other_topic_flows(
    settings: Settings, topic: str, mode: str
) -> None:
    missing = f"{topic}-missing"
    settings = dataclasses.replace(
        settings,
        kafka_auto_create_topics=False,
        park_after_attempts=PARK_AFTER,
        batch_size=20,
    )
    if mode == "wal":
        settings = wal_settings(settings)
    await create_topic(settings.bootstrap_servers, topic)
    url = settings.database_url
    publisher = KafkaPublisher(settings)
    relay = Relay(settings, publisher=publisher)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        if mode == "wal":  # the slot exists once the relay leads: rows from now on are seen
            await async_wait_until("the slot", lambda: slot_exists(url, settings.slot_name), 30)
        with psycopg.connect(url) as conn:
            for n in range(EVENTS):
                conn.execute(
                    "INSERT INTO outbox (topic, key, payload) "
                    "VALUES (%s, %s, jsonb_build_object('n', %s::int))",
                    (missing if n in MISSING_ROWS else topic, f"k{n % KEYS}", n),
                )
        started = time.monotonic()
        held = 2 * (EVENTS // KEYS - 1)  # the later events of k0 and k1
        expected = {"sent": EVENTS - len(MISSING_ROWS) - held, "parked": len(MISSING_ROWS)}
        await async_wait_until(
            "the other keys sent and the missing topic's events parked",
            lambda: states(url) == expected | {"pending": held},
            PROMPT_S,
        )
        elapsed = time.monotonic() - started
        assert not task.done(), task.exception()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

    assert elapsed < PROMPT_S
    with psycopg.connect(url) as conn:
        parked = conn.execute(
            "SELECT id, attempts, last_error FROM outbox WHERE state = 'parked' ORDER BY id"
        ).fetchall()
        held_keys = conn.execute(
            "SELECT DISTINCT key FROM outbox WHERE state = 'pending' ORDER BY key"
        ).fetchall()
    assert [attempts for _, attempts, _ in parked] == [PARK_AFTER] * len(MISSING_ROWS)
    for _, _, error in parked:
        assert error.startswith("UnknownTopicOrPartitionError:"), error
        assert f"topic {missing!r} does not exist" in error
    assert held_keys == [("k0",), ("k1",)]
    assert publisher.reconnects == 0  # metadata errors never replace the producer
    assert await topic_error(settings.bootstrap_servers, missing) == 3  # nothing created

    records = await consume(settings.bootstrap_servers, [topic], expected=expected["sent"])
    assert_delivered(records, outbox_rows(url, where="state = 'sent'"))
    assert {record.key for record in records}.isdisjoint({"k0", "k1"})


def slot_exists(url: str, slot_name: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot_name,)
        ).fetchone()
    return row is not None
