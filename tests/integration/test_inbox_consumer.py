"""The inbox consumer runner against the real broker and PostgreSQL: exactly-once effects."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaProducer

from relay._embedded import EmbeddedBroker
from relay.inbox import Inbox
from relay.inbox import migrate as inbox_migrate
from relay.inbox.consumer import InboxConsumer, Record
from tests.support import REPO

CUSTOMERS = 20
EXAMPLE = REPO / "examples" / "inbox_service.py"
PROGRESS_TIMEOUT_S = 60.0


async def produce_orders(bootstrap: str, topic: str, count: int, duplicates: int) -> None:
    """`count` order events keyed by customer, seq 1.. per customer; then `duplicates`
    of them sent again with the same event id (hand-made duplicates)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    seqs = [0] * CUSTOMERS
    sent: list[tuple[bytes, bytes, bytes]] = []
    try:
        for number in range(count):
            customer = number % CUSTOMERS
            seqs[customer] += 1
            key = f"c{customer}".encode()
            value = json.dumps({"customer": f"c{customer}", "seq": seqs[customer]}).encode()
            event_id = str(uuid.uuid4()).encode()
            sent.append((key, value, event_id))
            await producer.send(topic, value, key=key, headers=[("event_id", event_id)])
        for key, value, event_id in sent[-duplicates:] if duplicates else []:
            await producer.send(topic, value, key=key, headers=[("event_id", event_id)])
        await producer.flush()
    finally:
        await producer.stop()


def totals(url: str) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        exists = conn.execute("SELECT to_regclass('customer_orders') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return 0, 0
        row = conn.execute(
            "SELECT coalesce(sum(orders), 0), coalesce(sum(out_of_order), 0) FROM customer_orders"
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


def wait_for_applied(url: str, at_least: int) -> int:
    deadline = time.monotonic() + PROGRESS_TIMEOUT_S
    while time.monotonic() < deadline:
        applied, _ = totals(url)
        if applied >= at_least:
            return applied
        time.sleep(0.05)
    pytest.fail(f"fewer than {at_least} orders applied within {PROGRESS_TIMEOUT_S} s")


def start_service(url: str, bootstrap: str, topic: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                str(EXAMPLE),
                "--database-url",
                url,
                "--bootstrap-servers",
                bootstrap,
                "--topic",
                topic,
                "--max-batch-records",
                "40",
                "--session-timeout-ms",
                "6000",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


@pytest.mark.slow
async def test_sigkill_mid_batch_and_restarts_apply_every_event_exactly_once_in_key_order(
    database_url: str, broker: EmbeddedBroker, topic: str, tmp_path: Path
) -> None:
    total = 3000
    await produce_orders(broker.bootstrap_servers, topic, total, duplicates=200)
    log = tmp_path / "service.log"
    applied = 0
    for _ in range(3):
        service = start_service(database_url, broker.bootstrap_servers, topic, log)
        try:
            applied = await asyncio.to_thread(wait_for_applied, database_url, applied + 300)
        finally:
            service.send_signal(signal.SIGKILL)
            service.wait(10)
    service = start_service(database_url, broker.bootstrap_servers, topic, log)
    try:
        await asyncio.to_thread(wait_for_applied, database_url, total)
        service.send_signal(signal.SIGTERM)
        # SIGTERM drains in bounded time and exits cleanly.
        assert service.wait(20) == 0, log.read_text()
    finally:
        if service.poll() is None:
            service.kill()
            service.wait(10)
    assert totals(database_url) == (total, 0), log.read_text()[-3000:]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM inbox").fetchone() == (total,)


@pytest.mark.slow
async def test_two_consumers_in_one_group_through_rebalances_apply_exactly_once(
    database_url: str, broker: EmbeddedBroker, topic: str
) -> None:
    inbox_migrate.apply(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE applied (n bigserial, event_id uuid, seq int, customer text)")
    total = 2000
    await produce_orders(broker.bootstrap_servers, topic, total, duplicates=0)

    async def handler(conn: psycopg.AsyncConnection[Any], record: Record) -> None:
        order = json.loads(record.value or b"{}")
        await conn.execute(
            "INSERT INTO applied (event_id, seq, customer) VALUES (%s, %s, %s)",
            (record.event_id, order["seq"], order["customer"]),
        )

    def runner() -> InboxConsumer:
        return InboxConsumer(
            Inbox(consumer="rebalance"),
            handler,
            [topic],
            database_url=database_url,
            bootstrap_servers=broker.bootstrap_servers,
            max_batch_records=20,
            kafka_options={"metadata_max_age_ms": 1000},
        )

    def count() -> int:
        with psycopg.connect(database_url) as conn:
            row = conn.execute("SELECT count(DISTINCT event_id) FROM applied").fetchone()
            assert row is not None
            return int(row[0])

    async def until(at_least: int) -> None:
        deadline = time.monotonic() + PROGRESS_TIMEOUT_S
        while await asyncio.to_thread(count) < at_least:
            assert time.monotonic() < deadline, f"fewer than {at_least} applied"
            await asyncio.sleep(0.05)

    stop_first, stop_second = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(runner().run(stop_first), name="first")
    await until(200)
    second = asyncio.create_task(runner().run(stop_second), name="second")  # a rebalance
    await until(800)
    stop_first.set()  # another: the second takes every partition
    await asyncio.wait_for(first, 30)
    await until(total)
    stop_second.set()
    await asyncio.wait_for(second, 30)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT count(*), count(DISTINCT event_id) FROM applied").fetchone()
        assert rows == (total, total)
        # Per key, in the order produced.
        by_customer: dict[str, list[int]] = {}
        for customer, seq in conn.execute("SELECT customer, seq FROM applied ORDER BY n"):
            by_customer.setdefault(customer, []).append(seq)
    assert all(seqs == sorted(seqs) for seqs in by_customer.values())
