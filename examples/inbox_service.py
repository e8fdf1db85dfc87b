"""An idempotent consumer of the demo's order events (``outbox-relay demo``).

Applies each ``demo.orders`` record to ``customer_orders`` exactly once, through the
inbox: a redelivered record (relay crash window, consumer restart, rebalance) finds its
event id claimed and changes nothing. It also counts records that arrive out of their
customer's order (``seq`` not the next one), which must stay 0.

    python examples/inbox_service.py --database-url postgresql://app@db/app \\
        --bootstrap-servers kafka:9092

Stops (finishing the batch in flight) on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Any

import psycopg

from relay import logs
from relay.inbox import Inbox
from relay.inbox import migrate as inbox_migrate
from relay.inbox.consumer import InboxConsumer, Record

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS customer_orders (
    customer text PRIMARY KEY,
    orders bigint NOT NULL,
    last_seq bigint NOT NULL,
    out_of_order bigint NOT NULL DEFAULT 0
)"""
APPLY = """
INSERT INTO customer_orders AS c (customer, orders, last_seq)
VALUES (%(customer)s, 1, %(seq)s)
ON CONFLICT (customer) DO UPDATE SET
    orders = c.orders + 1,
    last_seq = excluded.last_seq,
    out_of_order = c.out_of_order + (excluded.last_seq <> c.last_seq + 1)::int
"""


async def apply_order(conn: psycopg.AsyncConnection[Any], record: Record) -> None:
    """The business change of one order event, on the inbox's transaction."""
    order = json.loads(record.value or b"{}")
    await conn.execute(APPLY, {"customer": order["customer"], "seq": order["seq"]})


async def main() -> None:
    """Parse flags, prepare the tables, consume until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", default="demo.orders")
    parser.add_argument("--consumer", default="order-totals")
    parser.add_argument("--max-batch-records", type=int, default=500)
    # A member that died without leaving holds its partitions this long.
    parser.add_argument("--session-timeout-ms", type=int, default=10_000)
    args = parser.parse_args()
    logs.configure("info", "auto")
    inbox_migrate.apply(args.database_url)
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        conn.execute(CREATE_TABLE)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumer = InboxConsumer(
        Inbox(consumer=args.consumer),
        apply_order,
        [args.topic],
        database_url=args.database_url,
        bootstrap_servers=args.bootstrap_servers,
        max_batch_records=args.max_batch_records,
        kafka_options={
            "metadata_max_age_ms": 1000,
            "session_timeout_ms": args.session_timeout_ms,
            "heartbeat_interval_ms": min(3000, args.session_timeout_ms // 3),
        },
    )
    print(f"consuming {args.topic} as {args.consumer}", flush=True)
    await consumer.run(stop)


if __name__ == "__main__":
    asyncio.run(main())
