"""Benchmark: records/s applied by the inbox consumer vs a naive idempotent consumer.

Both consume the same topic (each in its own consumer group) into their own inbox, with
a trivial handler (counts the record, no SQL of its own): the runner (`InboxConsumer`,
a batch per transaction, offsets committed per batch) and a naive loop that does what most
hand-written consumers do: one transaction and one offset commit per record.

Time runs from the first record handled to the last (the group join is left out), so
the figure is the steady rate. Starts its own PostgreSQL (EmbeddedPostgres) and broker
(EmbeddedBroker, tansu).

    .venv/bin/python bench/inbox.py --records 50000 --naive-records 5000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from relay._embedded import EmbeddedBroker, EmbeddedPostgres  # noqa: E402
from relay.inbox import Claim, Inbox, event_id_of  # noqa: E402
from relay.inbox import migrate as inbox_migrate  # noqa: E402
from relay.inbox.consumer import InboxConsumer, Record  # noqa: E402

TOPIC = "bench.inbox"


async def produce(bootstrap: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        for number in range(count):
            await producer.send(
                TOPIC,
                b'{"n":%d}' % number,
                key=b"k%d" % (number % 100),
                headers=[("event_id", str(uuid.uuid4()).encode())],
            )
        await producer.flush()
    finally:
        await producer.stop()


async def run_inbox(url: str, bootstrap: str, count: int) -> float:
    done = 0
    first = 0.0
    stop = asyncio.Event()

    async def handler(conn: psycopg.AsyncConnection[Any], record: Record) -> None:
        nonlocal done, first
        del conn, record
        if not done:
            first = time.perf_counter()
        done += 1
        if done >= count:
            stop.set()

    consumer = InboxConsumer(
        Inbox(consumer="runner"),
        handler,
        [TOPIC],
        database_url=url,
        bootstrap_servers=bootstrap,
        group_id="bench-runner",
        max_batch_records=1000,
    )
    await consumer.run(stop)
    return time.perf_counter() - first


async def run_naive(url: str, bootstrap: str, count: int) -> float:
    inbox = Inbox(consumer="naive")
    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=bootstrap,
        group_id="bench-naive",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await consumer.start()
    done = 0
    started = 0.0
    try:
        async for message in consumer:
            if not done:
                started = time.perf_counter()
            event_id = event_id_of([(k, bytes(v)) for k, v in message.headers])
            async with conn.transaction():
                claim = Claim(event_id, message.topic, message.partition, message.offset)
                await inbox.claim_async(conn, claim)
            await consumer.commit(
                {TopicPartition(message.topic, message.partition): message.offset + 1}
            )
            done += 1
            if done >= count:
                break
    finally:
        await consumer.stop()
        await conn.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--naive-records", type=int, default=5_000)
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="bench-inbox-"))
    with EmbeddedPostgres() as cluster, EmbeddedBroker(log_file=logs / "broker.log") as broker:
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench_inbox")
        url = cluster.url_for("bench_inbox")
        inbox_migrate.apply(url)
        asyncio.run(produce(broker.bootstrap_servers, max(args.records, args.naive_records)))
        inbox_s = asyncio.run(run_inbox(url, broker.bootstrap_servers, args.records))
        naive_s = asyncio.run(run_naive(url, broker.bootstrap_servers, args.naive_records))
    inbox_rate = args.records / inbox_s
    naive_rate = args.naive_records / naive_s
    print(f"inbox consumer: {args.records:,} records in {inbox_s:.2f} s = {inbox_rate:,.0f}/s")
    print(
        f"naive consumer: {args.naive_records:,} records in {naive_s:.2f} s = {naive_rate:,.0f}/s"
    )
    print(f"ratio: {inbox_rate / naive_rate:.1f}x")


if __name__ == "__main__":
    main()
