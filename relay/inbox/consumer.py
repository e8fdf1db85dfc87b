"""The consumer runner: Kafka records applied once each, in one transaction with the claim.

Per partition, in offset order, a batch of records is handled in ONE database
transaction: `Inbox.claim_many` drops the ids seen before, the handler runs for the
new ones on the same connection (it may also `relay.producer.publish_async` follow-up
events there), the transaction commits, and only then are the partition's offsets
committed to Kafka. A crash anywhere replays records whose claims either committed
(dropped as duplicates) or did not (applied now): every effect exactly once.

A batch whose handler fails is rolled back and its records are tried again one per
transaction, with backoff (`relay.decisions.backoff_s`), so that the records before
the failing one are applied and their offsets move.

A rebalance waits for the batch in flight: the listener takes the same lock as the
apply-and-commit step, so a revoked partition stops before its offsets move, and
records fetched for a partition no longer assigned are not applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import psycopg
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from psycopg import sql

from relay import connection, decisions
from relay import sql as relay_sql
from relay.inbox import names
from relay.inbox.claim import Claim, Inbox, event_id_of

logger = structlog.get_logger("relay.inbox")

#: Handler failures in a row before a record is parked (its key then waits).
PARK_AFTER_ATTEMPTS: Final = 5
#: Most records handled in one database transaction.
MAX_BATCH_RECORDS: Final = 500
FETCH_TIMEOUT_MS: Final = 200
#: SIGTERM: the batch in flight finishes (and commits) within this, or is abandoned
#: (rolled back; its records are redelivered to whoever gets the partition).
DRAIN_TIMEOUT_S: Final = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    """One Kafka record as the handler sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    event_id: uuid.UUID


#: The service's code: apply one record on the transaction's connection.
Handler = Callable[[psycopg.AsyncConnection[Any], Record], Awaitable[None]]


class ConsumerMetrics:
    """The runner's Prometheus metrics, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.processed = Counter(
            "outbox_inbox_records_processed", "Records applied.", ["consumer"], registry=r
        )
        self.duplicates = Counter(
            "outbox_inbox_duplicates_dropped",
            "Records dropped because their event id was claimed before.",
            ["consumer"],
            registry=r,
        )
        self.handler_errors = Counter(
            "outbox_inbox_handler_errors", "Handler failures.", ["consumer"], registry=r
        )
        self.handler_seconds = Histogram(
            "outbox_inbox_handler_seconds",
            "Time in the handler per transaction.",
            ["consumer"],
            registry=r,
        )
        self.parked = Counter(
            "outbox_inbox_records_parked",
            "Records parked: their handler kept failing, or they wait behind one.",
            ["consumer"],
            registry=r,
        )
        self.lag = Gauge(
            "outbox_inbox_consumer_lag_records",
            "Records behind the partition's end after the last fetch.",
            ["consumer", "topic", "partition"],
            registry=r,
        )


def _record(message: Any) -> Record:  # noqa: ANN401 - aiokafka's ConsumerRecord is untyped
    headers = tuple((name, bytes(value or b"")) for name, value in message.headers)
    return Record(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        headers=headers,
        event_id=event_id_of(headers),
    )


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, lock: asyncio.Lock, consumer_name: str) -> None:
        self._lock = lock
        self._name = consumer_name

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        # Waits for the batch in flight to commit (DB, then offsets) before the group
        # hands the partitions to someone else.
        async with self._lock:
            logger.info("partitions revoked", consumer=self._name, partitions=len(revoked))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        logger.info("partitions assigned", consumer=self._name, partitions=len(assigned))


class InboxConsumer:
    """Consume `topics` as group `group_id`, applying each record once through `handler`."""

    def __init__(
        self,
        inbox: Inbox,
        handler: Handler,
        topics: Sequence[str],
        *,
        database_url: str,
        bootstrap_servers: str,
        group_id: str | None = None,
        max_batch_records: int = MAX_BATCH_RECORDS,
        metrics: ConsumerMetrics | None = None,
        kafka_options: dict[str, Any] | None = None,
        random_source: Callable[[], float] = random.random,
        park_after_attempts: int = PARK_AFTER_ATTEMPTS,
    ) -> None:
        self.inbox = inbox
        self.handler = handler
        self.topics = tuple(topics)
        self.database_url = database_url
        self.bootstrap_servers = bootstrap_servers
        self.group_id = group_id or inbox.consumer
        self.max_batch_records = max_batch_records
        self.metrics = metrics or ConsumerMetrics()
        self.kafka_options = kafka_options or {}
        self.park_after_attempts = park_after_attempts
        self._random = random_source
        self._lock = asyncio.Lock()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; the batch in flight finishes first."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **self.kafka_options,
        )
        consumer.subscribe(list(self.topics), listener=_Listener(self._lock, self.inbox.consumer))
        conn = await connection.connect(self.database_url, f"inbox {self.inbox.consumer}")
        await consumer.start()
        try:
            while not stop.is_set():
                async with self._lock:
                    await self._run_retries(conn)
                fetched = await consumer.getmany(
                    timeout_ms=FETCH_TIMEOUT_MS, max_records=self.max_batch_records
                )
                for tp, messages in fetched.items():
                    if stop.is_set():
                        break
                    async with self._lock:
                        if tp not in consumer.assignment():
                            continue  # revoked while fetched: its new owner applies it
                        await self._apply_partition(conn, consumer, tp, messages, stop)
                    self._report_lag(consumer, tp, messages[-1].offset + 1)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), DRAIN_TIMEOUT_S)
            await conn.close()

    def _report_lag(self, consumer: AIOKafkaConsumer, tp: TopicPartition, next_offset: int) -> None:
        end = consumer.highwater(tp)
        if end is not None:
            self.metrics.lag.labels(self.inbox.consumer, tp.topic, str(tp.partition)).set(
                max(0, end - next_offset)
            )

    async def _apply_partition(
        self,
        conn: psycopg.AsyncConnection[Any],
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        messages: Sequence[Any],
        stop: asyncio.Event,
    ) -> None:
        records = [_record(m) for m in messages]
        try:
            await self._apply(conn, records)
        except Exception:  # noqa: BLE001 - the handler's errors are the service's
            self.metrics.handler_errors.labels(self.inbox.consumer).inc()
            # Isolate the failing record: apply the others one per transaction.
            for record in records:
                await self._apply_with_retries(conn, record, stop)
                if stop.is_set():
                    return
                await consumer.commit({tp: record.offset + 1})
            return
        await consumer.commit({tp: records[-1].offset + 1})

    def _query(self, name: str) -> sql.Composed:
        return relay_sql.query(
            "inbox", name, names.identifiers(self.inbox.schema, self.inbox.table)
        )

    async def _held(self, conn: psycopg.AsyncConnection[Any]) -> dict[tuple[str, bytes], str]:
        """Held keys, each with the state a record parked behind it gets."""
        cursor = await conn.execute(self._query("held_keys"), {"consumer": self.inbox.consumer})
        return {
            (topic, bytes(key)): ("parked" if any_parked else "retry")
            for topic, key, any_parked in await cursor.fetchall()
        }

    async def _park(
        self,
        conn: psycopg.AsyncConnection[Any],
        record: Record,
        *,
        error: str,
        attempts: int,
        state: str = "parked",
    ) -> None:
        await conn.execute(
            self._query("park"),
            {
                "consumer": self.inbox.consumer,
                "event_id": record.event_id,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "key": record.key,
                "value": record.value,
                "headers": json.dumps(
                    [[k, v.decode("utf-8", "replace")] for k, v in record.headers]
                ),
                "error": error,
                "attempts": attempts,
                "state": state,
            },
        )
        self.metrics.parked.labels(self.inbox.consumer).inc()

    async def _apply(self, conn: psycopg.AsyncConnection[Any], records: Sequence[Record]) -> None:
        name = self.inbox.consumer
        async with conn.transaction():
            held = await self._held(conn)
            flowing = []
            for record in records:
                hold = held.get((record.topic, record.key)) if record.key is not None else None
                if hold is None:
                    flowing.append(record)
                else:
                    # Its key waits behind a parked record: park it too, in key order.
                    await self._park(
                        conn,
                        record,
                        error="held behind a parked record of its key",
                        attempts=0,
                        state=hold,
                    )
            new = await self.inbox.claim_many_async(
                conn, [Claim(r.event_id, r.topic, r.partition, r.offset) for r in flowing]
            )
            started = time.perf_counter()
            for record, is_new in zip(flowing, new, strict=True):
                if is_new:
                    await self.handler(conn, record)
            self.metrics.handler_seconds.labels(name).observe(time.perf_counter() - started)
        applied = sum(new)
        self.metrics.processed.labels(name).inc(applied)
        if applied < len(flowing):
            self.metrics.duplicates.labels(name).inc(len(flowing) - applied)

    async def _apply_with_retries(
        self, conn: psycopg.AsyncConnection[Any], record: Record, stop: asyncio.Event
    ) -> None:
        failures = 0
        while not stop.is_set():
            try:
                await self._apply(conn, [record])
            except Exception as exc:
                failures += 1
                self.metrics.handler_errors.labels(self.inbox.consumer).inc()
                if failures >= self.park_after_attempts:
                    async with conn.transaction():
                        await self._park(conn, record, error=repr(exc), attempts=failures)
                    logger.exception(
                        "record parked; its key waits (outbox-relay inbox retry)",
                        consumer=self.inbox.consumer,
                        topic=record.topic,
                        partition=record.partition,
                        offset=record.offset,
                        error=repr(exc),
                    )
                    return
                delay = decisions.backoff_s(failures, self._random)
                logger.warning(
                    "handler failed; retrying",
                    consumer=self.inbox.consumer,
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    failures=failures,
                    retry_in_s=round(delay, 3),
                    error=repr(exc),
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            else:
                return

    async def _run_retries(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Apply records released by ``inbox retry``, oldest first, until none is due."""
        while True:
            row_id = None
            try:
                async with conn.transaction():
                    cursor = await conn.execute(
                        self._query("next_retry"), {"consumer": self.inbox.consumer}
                    )
                    row = await cursor.fetchone()
                    if row is None:
                        return
                    row_id, event_id, topic, partition, offset, key, value, headers = row
                    record = Record(
                        topic,
                        partition,
                        offset,
                        bytes(key) if key is not None else None,
                        bytes(value) if value is not None else None,
                        tuple((k, v.encode()) for k, v in headers),
                        event_id,
                    )
                    if await self.inbox.claim_async(
                        conn, Claim(event_id, topic, partition, offset)
                    ):
                        await self.handler(conn, record)
                        self.metrics.processed.labels(self.inbox.consumer).inc()
                    await conn.execute(self._query("retried"), {"id": row_id})
            except Exception as exc:
                if row_id is None:
                    raise  # the database, not the handler
                self.metrics.handler_errors.labels(self.inbox.consumer).inc()
                async with conn.transaction():
                    await conn.execute(
                        self._query("retry_failed"), {"id": row_id, "error": repr(exc)}
                    )
                return
