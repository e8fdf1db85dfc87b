"""An example service: writes an order and its outbox event in one transaction.

The relay turns each outbox row into a Kafka record on the ``orders`` topic, keyed by
the order id, so every event of one order lands on one partition, in order. Plain SQL
through the outbox's ``outbox_publish(topic, key, payload, headers, event_type,
aggregate_type)`` function, so the same works from any language.

    DATABASE_URL=postgresql://app:app@localhost/app python examples/order_service.py
"""

from __future__ import annotations

import json
import os
import random
import secrets
import time
import uuid

import psycopg

CREATE_ORDERS = """
CREATE TABLE IF NOT EXISTS orders (
    id uuid PRIMARY KEY,
    customer text NOT NULL,
    amount_cents integer NOT NULL,
    status text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)"""


def traceparent() -> str:
    """A W3C trace context, as an instrumented service would pass along."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def place_order(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    """Insert an order and its ``order.placed`` event atomically; return the order id."""
    order_id = str(uuid.uuid4())
    customer = f"customer-{random.randint(1, 50)}"  # noqa: S311 - example data
    amount = random.randint(500, 50_000)  # noqa: S311
    with conn.transaction():
        conn.execute(
            "INSERT INTO orders (id, customer, amount_cents, status) VALUES (%s, %s, %s, 'placed')",
            (order_id, customer, amount),
        )
        conn.execute(
            "SELECT outbox_publish(%s, %s, %s, %s, %s, %s)",
            (
                "orders",
                order_id,
                json.dumps({"order_id": order_id, "customer": customer, "amount_cents": amount}),
                json.dumps({"traceparent": traceparent()}),
                "order.placed",
                "order",
            ),
        )
    return order_id


def pay_order(conn: psycopg.Connection[tuple[object, ...]], order_id: str) -> None:
    """Mark an order paid and publish ``order.paid`` with the same key (same partition)."""
    with conn.transaction():
        conn.execute("UPDATE orders SET status = 'paid' WHERE id = %s", (order_id,))
        conn.execute(
            "SELECT outbox_publish(%s, %s, %s, %s, %s, %s)",
            (
                "orders",
                order_id,
                json.dumps({"order_id": order_id}),
                json.dumps({"traceparent": traceparent()}),
                "order.paid",
                "order",
            ),
        )


def main() -> None:
    """Write orders until stopped."""
    url = os.environ.get("DATABASE_URL", "postgresql://app:app@localhost:5432/app")
    rate = float(os.environ.get("ORDERS_PER_SECOND", "5"))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(CREATE_ORDERS)
        unpaid: list[str] = []
        while True:
            unpaid.append(place_order(conn))
            if len(unpaid) > 3:  # noqa: PLR2004 - pay orders a little after placing them
                pay_order(conn, unpaid.pop(0))
            print(f"placed order {unpaid[-1]}", flush=True)
            time.sleep(1 / rate)


if __name__ == "__main__":
    main()
