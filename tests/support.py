"""What the tests share: reading back what reached Kafka, running the CLI, dropping a
test database."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import psycopg
import psycopg.errors
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

REPO = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True, slots=True)
class Consumed:
    """One record as a consumer sees it."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes | None
    headers: dict[str, bytes]

    @classmethod
    def of(cls, message: ConsumerRecord[bytes, bytes]) -> Consumed:
        """The record an aiokafka consumer returned."""
        return cls(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key.decode() if message.key is not None else None,
            value=message.value,
            headers={name: bytes(value) for name, value in message.headers},
        )

    @property
    def event_id(self) -> str:
        """The ``event_id`` header every relayed record carries."""
        return self.headers["event_id"].decode()


async def consume(
    bootstrap_servers: str,
    topics: Iterable[str],
    *,
    expected: int,
    timeout_s: float = 30.0,
    idle_s: float = 1.0,
) -> list[Consumed]:
    """Read every record of `topics` from the start, until `expected` arrived and
    nothing more came for `idle_s`, or `timeout_s` passed."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        metadata_max_age_ms=1000,
    )
    await consumer.start()
    records: list[Consumed] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last_new = loop.time()
    try:
        while loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                for message in messages:
                    records.append(Consumed.of(message))
                    last_new = loop.time()
            if len(records) >= expected and loop.time() - last_new >= idle_s:
                break
    finally:
        await consumer.stop()
    return records


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``outbox-relay`` in a subprocess, as a user would."""
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        env=clean_env | (env or {}),
        timeout=timeout,
        check=False,
        cwd=REPO,
    )


def drop_database(server_url: str, name: str) -> None:
    """Drop the test database `name` and its replication slots, from `server_url`."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        # A logical slot pins its database: drop the test's slots first. A relay a test
        # left reconnecting may take a slot again between the two statements, and a
        # stopped relay's walsender may not have let go of it yet: retry.
        for attempt in range(50):
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                "WHERE database = %s AND active_pid IS NOT NULL",
                (name,),
            )
            try:
                conn.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE database = %s",
                    (name,),
                )
                break
            except psycopg.errors.ObjectInUse:
                if attempt == 49:
                    raise
                time.sleep(0.1)
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
