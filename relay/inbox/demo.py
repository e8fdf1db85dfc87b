"""The inbox part of ``outbox-relay demo --with-inbox``: apply every order event once.

After the relay delivered the demo's events, an `InboxConsumer` reads ``demo.orders``
into the demo database's ``customer_orders`` table (what ``examples/inbox_service.py``
does), then the demo checks the table: every order counted once, none out of its
customer's order.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Final

import psycopg

from relay.inbox import migrate as inbox_migrate
from relay.inbox.claim import Inbox
from relay.inbox.consumer import InboxConsumer, Record

CONSUMER: Final = "demo-order-totals"
APPLY_TIMEOUT_S: Final = 60.0
CHECK_INTERVAL_S: Final = 0.1

_CREATE_TABLE: Final = """
CREATE TABLE IF NOT EXISTS customer_orders (
    customer text PRIMARY KEY,
    orders bigint NOT NULL,
    last_seq bigint NOT NULL,
    out_of_order bigint NOT NULL DEFAULT 0
)"""
_APPLY: Final = """
INSERT INTO customer_orders AS c (customer, orders, last_seq)
VALUES (%(customer)s, 1, %(seq)s)
ON CONFLICT (customer) DO UPDATE SET
    orders = c.orders + 1,
    last_seq = excluded.last_seq,
    out_of_order = c.out_of_order + (excluded.last_seq <= c.last_seq)::int
"""
_TOTALS: Final = (
    "SELECT coalesce(sum(orders), 0), coalesce(sum(out_of_order), 0) FROM customer_orders"
)


async def _apply_order(conn: psycopg.AsyncConnection[Any], record: Record) -> None:
    order = json.loads(record.value or b"{}")
    await conn.execute(_APPLY, {"customer": order["customer"], "seq": order["seq"]})


async def _totals(url: str) -> tuple[int, int]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(_TOTALS)
        row = await cursor.fetchone()
    assert row is not None  # noqa: S101 - an aggregate always returns a row
    return int(row[0]), int(row[1])


async def _run(url: str, bootstrap: str, topic: str, expected: int) -> tuple[int, int, int]:
    consumer = InboxConsumer(
        Inbox(consumer=CONSUMER),
        _apply_order,
        [topic],
        database_url=url,
        bootstrap_servers=bootstrap,
        kafka_options={"metadata_max_age_ms": 1000},
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop), name="inbox-consumer")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + APPLY_TIMEOUT_S
    try:
        while loop.time() < deadline and not task.done():
            applied, _ = await _totals(url)
            if applied >= expected:
                break
            await asyncio.sleep(CHECK_INTERVAL_S)
    finally:
        stop.set()
        await asyncio.wait_for(task, APPLY_TIMEOUT_S)
    applied, out_of_order = await _totals(url)
    duplicates = int(consumer.metrics.duplicates.labels(CONSUMER)._value.get())  # noqa: SLF001
    return applied, out_of_order, duplicates


def run(url: str, bootstrap: str, topic: str, expected: int, say: Callable[[str], None]) -> bool:
    """Apply the demo's events through the inbox; True when each was applied once, in order."""
    inbox_migrate.apply(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_CREATE_TABLE)
    say(f"inbox: consumer {CONSUMER} applying {topic} to customer_orders, once per event ...")
    applied, out_of_order, duplicates = asyncio.run(_run(url, bootstrap, topic, expected))
    say(
        f"inbox: {applied:,} of {expected:,} orders applied, each once "
        f"({duplicates:,} duplicate deliveries dropped, {out_of_order:,} out of key order)"
    )
    return applied == expected and out_of_order == 0
