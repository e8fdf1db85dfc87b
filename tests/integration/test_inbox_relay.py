"""Outbox -> relay -> inbox end to end, through the relay's crash-window replay."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import psycopg

from relay.config import Settings
from relay.inbox import Inbox
from relay.inbox import migrate as inbox_migrate
from relay.inbox.consumer import InboxConsumer, Record
from tests.integration.poll_stack import all_sent, async_wait_until, insert_events, relay_in_process

TOTAL = 400
KEYS = 20


async def test_a_relay_crash_window_replay_changes_the_business_table_once_in_key_order(
    settings: Settings, topic: str
) -> None:
    url = settings.database_url
    inbox_migrate.apply(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE applied (seq bigserial, key text, n int)")
    insert_events(url, topic, TOTAL, keys=KEYS)

    async def handler(conn: psycopg.AsyncConnection[Any], record: Record) -> None:
        n = json.loads(record.value or b"")["n"]
        await conn.execute(
            "INSERT INTO applied (key, n) VALUES (%s, %s)", ((record.key or b"").decode(), n)
        )

    async with relay_in_process(settings):
        await async_wait_until("all sent", all_sent(url, TOTAL))
    # The crash window: Kafka acknowledged these, the relay died before marking them
    # sent. The next relay publishes them again, with the same event ids.
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE outbox SET state = 'pending', sent_at = NULL WHERE id % 3 = 0")
    async with relay_in_process(settings):
        await async_wait_until("all sent again", all_sent(url, TOTAL))

    def count() -> int:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM applied").fetchone()
            assert row is not None
            return int(row[0])

    stop = asyncio.Event()
    consumer = InboxConsumer(
        Inbox(consumer="e2e"),
        handler,
        [topic],
        database_url=url,
        bootstrap_servers=settings.bootstrap_servers,
        kafka_options={"metadata_max_age_ms": 1000},
    )
    task = asyncio.create_task(consumer.run(stop), name="consumer")
    try:
        await async_wait_until("all applied", lambda: count() >= TOTAL)
        # The replayed copies come after the originals: let them arrive and be dropped.
        deadline = time.monotonic() + 30
        while consumer.metrics.duplicates.labels("e2e")._value.get() < TOTAL // 3:
            assert time.monotonic() < deadline, "the replayed copies never arrived"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT key, n FROM applied ORDER BY seq").fetchall()
        ids = conn.execute("SELECT id, key FROM outbox ORDER BY id").fetchall()
    assert sorted(n for _, n in rows) == list(range(TOTAL))  # each exactly once
    by_key: dict[str, list[int]] = {}
    for key, n in rows:
        by_key.setdefault(key, []).append(n)
    # Per key, in outbox order (n grows with id within a key).
    assert all(ns == sorted(ns) for ns in by_key.values())
    assert len(ids) == TOTAL
