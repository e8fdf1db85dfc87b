"""WAL mode stops decoding at its byte cap while the broker is away, then drains in order.

Issue 9: through a broker outage the queue filled to its count cap alone, so the
relay's memory grew with the payload size (199 MB RSS at 2 KB payloads).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
import pytest

from relay.config import Settings
from relay.events import OutboxEvent, PublishFailure, PublishResult
from relay.kafka import KafkaPublisher
from relay.wal import WalSource
from relay.wal import _source as wal_source
from tests.integration.test_wal_relay import running_relay, states, wait_until, wal_settings
from tests.oracle import assert_delivered, outbox_rows
from tests.support import consume

CAP_BYTES = 64 * 1024
PAD_BYTES = 8000
EVENTS = 200


class GatedPublisher:
    """Kafka behind a gate: a publish waits (a broker that does not answer) until it opens."""

    def __init__(self, kafka: KafkaPublisher) -> None:
        self.kafka = kafka
        self.gate = asyncio.Event()
        self.waiting = False

    async def start(self) -> None:
        """Connect to Kafka."""
        await self.kafka.start()

    async def stop(self) -> None:
        """Disconnect from Kafka."""
        await self.kafka.stop()

    async def publish(self, events: Sequence[OutboxEvent]) -> PublishResult:
        """Publish once the gate opens."""
        self.waiting = True
        await self.gate.wait()
        return await self.kafka.publish(events)


def decoded_bytes(source: WalSource) -> int:
    """The payload bytes decoded and not settled, queued or in flight (counted here, not by
    the source)."""
    held = [*source._queue, *source._fetched.unsettled()]
    return sum(len(event.value or b"") for event in held)


def insert_big(url: str, topic: str, events: int, last_transaction: int) -> None:
    """`PAD_BYTES` payloads of five keys taking turns, one transaction each but the last
    `last_transaction` together (larger than the cap: it must go through all the same)."""
    with psycopg.connect(url) as conn:
        for n in range(events):
            conn.execute(
                "INSERT INTO outbox (topic, key, payload) VALUES (%s, %s, %s)",
                (topic, f"k{n % 5}", json.dumps({"n": n, "pad": "x" * PAD_BYTES})),
            )
            if n < events - last_transaction:
                conn.commit()
        conn.commit()


@contextlib.asynccontextmanager
async def opened_at_exit(publisher: GatedPublisher) -> AsyncIterator[None]:
    """Open the gate on the way out: a failed test's loop must not wait at it."""
    try:
        yield
    finally:
        publisher.gate.set()


async def test_the_stream_stops_at_the_byte_cap_and_resumes_in_order(
    settings: Settings, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wal_source, "MAX_QUEUED_BYTES", CAP_BYTES)
    settings = wal_settings(settings)
    url = settings.database_url
    publisher = GatedPublisher(KafkaPublisher(settings))
    async with (
        running_relay(settings, 50, publisher=publisher) as source,
        opened_at_exit(publisher),
    ):
        insert_big(url, topic, EVENTS, 20)  # about 1.6 MB, 25 times the cap
        await wait_until(lambda: publisher.waiting and decoded_bytes(source) >= CAP_BYTES, 10)
        await asyncio.sleep(1.0)  # time to read on, had the cap not stopped the stream
        # The stream stops once the cap is reached: a read's worth past it at most.
        assert decoded_bytes(source) < CAP_BYTES + 4 * PAD_BYTES
        publisher.gate.set()
        most = 0
        async with asyncio.timeout(30):
            while states(url) != {"sent": EVENTS}:
                most = max(most, decoded_bytes(source))
                await asyncio.sleep(0.01)
        # All sent: the last transaction, larger than the cap, went through too.
        assert most < CAP_BYTES + 20 * (PAD_BYTES + 100)
    records = await consume(settings.bootstrap_servers, [topic], expected=EVENTS, idle_s=1)
    assert_delivered(records, outbox_rows(url))


class RefusingPublisher(GatedPublisher):
    """Kafka away, answering at once: every batch fails retriably until the gate opens."""

    async def publish(self, events: Sequence[OutboxEvent]) -> PublishResult:
        """A retriable failure for every event while the gate is shut."""
        if not self.gate.is_set():
            self.waiting = True
            failure = PublishFailure("KafkaConnectionError: test outage", retriable=True)
            return PublishResult(tuple(events), (failure,) * len(events))
        return await self.kafka.publish(events)


async def test_the_start_up_sweep_stops_at_the_byte_cap_through_an_outage(
    settings: Settings, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each retry's fetch read one more sweep chunk while the queue held fewer than two
    batches, however large their events: the rewound batches piled up."""
    monkeypatch.setattr(wal_source, "MAX_QUEUED_BYTES", CAP_BYTES)
    monkeypatch.setattr(wal_source, "SWEEP_CHUNK", 10)
    settings = wal_settings(settings)
    url = settings.database_url
    insert_big(url, topic, EVENTS, 1)  # pending before the slot exists: swept
    publisher = RefusingPublisher(KafkaPublisher(settings))
    async with (
        running_relay(settings, 50, publisher=publisher) as source,
        opened_at_exit(publisher),
    ):
        await wait_until(lambda: publisher.waiting)
        await asyncio.sleep(2.0)  # a few retries, each one fetch
        # One chunk past the cap at most.
        assert decoded_bytes(source) < CAP_BYTES + 10 * (PAD_BYTES + 100)
        publisher.gate.set()
        await wait_until(lambda: states(url) == {"sent": EVENTS}, 30)
    records = await consume(settings.bootstrap_servers, [topic], expected=EVENTS, idle_s=1)
    assert_delivered(records, outbox_rows(url))


async def test_a_sweep_of_large_rows_reads_them_a_few_at_a_time(
    settings: Settings, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep asked for 5000 rows per query whatever their size: 5000 rows of 10 KB
    are 50 MB in one result. After its first query it asks for as many rows as fit in
    `SWEEP_CHUNK_BYTES`."""
    monkeypatch.setattr(wal_source, "SWEEP_CHUNK_BYTES", 4 * PAD_BYTES)
    monkeypatch.setattr(wal_source, "SWEEP_FIRST_CHUNK", 10)
    chunks: list[int] = []
    queue_swept = WalSource._queue_swept

    def counting(
        source: WalSource, rows: Sequence[Sequence[Any]], state: Any
    ) -> list[wal_source.UnreadableRow]:
        chunks.append(len(rows))
        return queue_swept(source, rows, state)

    monkeypatch.setattr(WalSource, "_queue_swept", counting)
    settings = wal_settings(settings)
    url = settings.database_url
    insert_big(url, topic, EVENTS, 1)  # pending before the slot exists: swept
    async with running_relay(settings, 50):
        await wait_until(lambda: states(url) == {"sent": EVENTS}, 30)
    assert sum(chunks) == EVENTS
    assert chunks[0] == 10  # then four 8 KB rows a query
    assert max(chunks[1:]) <= 4, chunks
    records = await consume(settings.bootstrap_servers, [topic], expected=EVENTS, idle_s=1)
    assert_delivered(records, outbox_rows(url))
