"""A failing handler parks its record; its key waits, other keys flow; retry applies it first."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import psycopg
from aiokafka import AIOKafkaProducer

from relay._embedded import EmbeddedBroker
from relay.inbox import Inbox
from relay.inbox import migrate as inbox_migrate
from relay.inbox.consumer import InboxConsumer, Record
from tests.support import run_cli

TIMEOUT_S = 60.0


async def produce(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for seq in range(1, 6):
            for key in ("a", "b", "c"):
                await producer.send_and_wait(
                    topic,
                    json.dumps({"seq": seq}).encode(),
                    key=key.encode(),
                    headers=[("event_id", str(uuid.uuid4()).encode())],
                )
    finally:
        await producer.stop()


async def test_a_parked_record_holds_its_key_and_retry_applies_it_first(
    database_url: str, broker: EmbeddedBroker, topic: str
) -> None:
    inbox_migrate.apply(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE applied (n bigserial, key text, seq int)")
    await produce(broker.bootstrap_servers, topic)
    broken = {("a", 2)}

    async def handler(conn: psycopg.AsyncConnection[Any], record: Record) -> None:
        key, seq = (record.key or b"").decode(), json.loads(record.value or b"")["seq"]
        if (key, seq) in broken:
            raise RuntimeError(f"cannot apply {key} {seq}")
        await conn.execute("INSERT INTO applied (key, seq) VALUES (%s, %s)", (key, seq))

    def applied() -> dict[str, list[int]]:
        with psycopg.connect(database_url) as conn:
            found: dict[str, list[int]] = {}
            for key, seq in conn.execute("SELECT key, seq FROM applied ORDER BY n"):
                found.setdefault(key, []).append(seq)
            return found

    def parked() -> int:
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM inbox_parked WHERE state IN ('parked', 'retry')"
            ).fetchone()
            assert row is not None
            return int(row[0])

    async def until(check: Any) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not await asyncio.to_thread(check):
            assert time.monotonic() < deadline, await asyncio.to_thread(applied)
            await asyncio.sleep(0.05)

    stop = asyncio.Event()
    consumer = InboxConsumer(
        Inbox(consumer="parking"),
        handler,
        [topic],
        database_url=database_url,
        bootstrap_servers=broker.bootstrap_servers,
        park_after_attempts=2,
        random_source=lambda: 0.0,
        kafka_options={"metadata_max_age_ms": 1000},
    )
    task = asyncio.create_task(consumer.run(stop), name="consumer")
    try:
        # Other keys flow; a waits behind its parked record (seq 2), seq 3..5 park too.
        await until(lambda: applied().get("b") == [1, 2, 3, 4, 5] and parked() == 4)
        await until(lambda: applied().get("c") == [1, 2, 3, 4, 5])
        assert applied()["a"] == [1]
        status = run_cli("inbox", "status", "--json", "--database-url", database_url)
        assert json.loads(status.stdout)["consumers"][0]["parked"] == 4
        nothing = run_cli(
            "inbox", "retry", "--consumer", "parking", "--key", "zzz",
            "--database-url", database_url,
        )  # fmt: skip
        assert nothing.returncode == 3
        broken.clear()
        done = run_cli(
            "inbox", "retry", "--consumer", "parking", "--key", "a", "--json",
            "--database-url", database_url,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"released": 4}
        await until(lambda: applied().get("a") == [1, 2, 3, 4, 5])
        assert parked() == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert applied() == {"a": [1, 2, 3, 4, 5], "b": [1, 2, 3, 4, 5], "c": [1, 2, 3, 4, 5]}
