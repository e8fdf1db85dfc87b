"""WAL mode confirms the slot only past settled events: reconnects, replays, acceptance."""

from __future__ import annotations

import asyncio
import json
import uuid

import psycopg
import pytest

from relay.config import OnSent, Settings
from relay.events import Acknowledgement, OutboxEvent
from relay.wal import WalSource
from tests.integration.test_wal_relay import (
    insert_events,
    wait_until,
    wal_settings,
)


def terminate_relay_sessions(url: str) -> None:
    """What a PostgreSQL restart does to the relay: every session of it ends."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE 'outbox-relay%' "
            "AND pid <> pg_backend_pid()"
        )


async def fetch_until(source: WalSource, wanted: int, timeout_s: float = 30.0) -> list[OutboxEvent]:
    """Fetch (and acknowledge as sent) until `wanted` events came, or `timeout_s` passed."""
    got: list[OutboxEvent] = []
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(got) < wanted and asyncio.get_running_loop().time() < deadline:
        batch = list(await source.fetch(5))
        if not batch:
            await source.wait(0.2)
            continue
        await source.acknowledge(Acknowledgement(sent=tuple(batch)))
        got.extend(batch)
    return got


async def test_on_sent_none_loses_no_queued_event_when_the_database_connection_breaks(
    settings: Settings,
) -> None:
    """--on-sent none: events decoded but not yet fetched survive a lost connection.

    The reconnect clears the queue and skips every replayed transaction up to the
    highest one decoded; with no table record (no sweep) the queued events were gone.
    """
    settings = wal_settings(settings, on_sent=OnSent.NONE)
    topic = f"t{uuid.uuid4().hex[:8]}"
    source = WalSource(settings)
    await source.start()
    try:
        insert_events(settings.database_url, topic, [f"k{i}" for i in range(20)])
        first = await fetch_until(source, 5)
        assert 5 <= len(first) < 20
        # The others are decoded and queued, not yet handed to the loop.
        await wait_until(lambda: len(source._queue) == 20 - len(first))
        terminate_relay_sessions(settings.database_url)
        # The heartbeat notices the broken connection; the next fetch reconnects.
        await wait_until(lambda: source._conn is None or source._conn.broken)
        # The replay may start before the first five (their confirmation may not have
        # reached the server): duplicates are allowed, a missing event is not.
        numbers = {number(event) for event in first}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while numbers != set(range(20)) and loop.time() < deadline:
            numbers.update(number(event) for event in await fetch_until(source, 1))
    finally:
        await source.stop()
    assert numbers == set(range(20))


def number(event: OutboxEvent) -> int:
    n: int = json.loads(event.value or b"null")["n"]
    return n


async def fetch_some(
    source: WalSource, max_events: int, timeout_s: float = 20.0
) -> list[OutboxEvent]:
    """The next non-empty batch (without acknowledging it)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        batch = list(await source.fetch(max_events))
        if batch:
            return batch
        await source.wait(0.2)
    raise AssertionError("no events in time")


async def test_an_event_fetched_before_a_reconnect_does_not_confirm_its_replayed_transaction(
    settings: Settings,
) -> None:
    settings = wal_settings(settings, on_sent=OnSent.NONE)
    topic = f"t{uuid.uuid4().hex[:8]}"
    source = WalSource(settings)
    await source.start()
    try:
        # One transaction, two events.
        insert_events(settings.database_url, topic, ["a", "b"], per_transaction=2)
        old_first = await fetch_some(source, 1)
        await wait_until(lambda: len(source._queue) == 1)
        terminate_relay_sessions(settings.database_url)
        await wait_until(lambda: source._conn is None or source._conn.broken)
        new_first = await fetch_some(source, 1)  # reconnects; the transaction is replayed
        await source.acknowledge(Acknowledgement(sent=tuple(old_first)))
        await source.acknowledge(Acknowledgement(sent=tuple(new_first)))
        # The second event was never acknowledged: the relay stops (or is killed) now.
    finally:
        await source.stop()
    restarted = WalSource(settings)
    await restarted.start()
    try:
        got = await fetch_until(restarted, 2, timeout_s=5)
    finally:
        await restarted.stop()
    assert "b" in {event.key for event in got}


def confirmed_flush_lsn(url: str, slot_name: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (slot_name,),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_the_slot_is_not_confirmed_past_a_transaction_still_being_accepted(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a decoded transaction waits for the database (parking an unreadable
    table-less message), its events are neither queued nor tracked: the idle status
    update must not confirm the server's position past it."""
    settings = wal_settings(settings, message_prefix="outbox", heartbeat_interval=60.0)
    source = WalSource(settings)
    parking = asyncio.Event()
    release = asyncio.Event()
    park_rejected = source._park_rejected

    async def slow_park(rejected: object) -> None:
        parking.set()
        await release.wait()
        await park_rejected(rejected)  # type: ignore[arg-type]

    monkeypatch.setattr(source, "_park_rejected", slow_park)
    await source.start()
    try:
        with psycopg.connect(settings.database_url) as conn:
            conn.execute("SELECT pg_logical_emit_message(true, 'outbox', 'not json')")
            conn.execute(
                "SELECT pg_logical_emit_message(true, 'outbox', %s)",
                ('{"topic": "orders", "key": "k", "payload": {"n": 1}}',),
            )
            end = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
            conn.commit()
        assert end is not None
        await asyncio.wait_for(parking.wait(), 20)
        # Keepalives and status updates go on meanwhile (one a second).
        await asyncio.sleep(3)
        confirmed = confirmed_flush_lsn(settings.database_url, settings.slot_name)
        release.set()
    finally:
        release.set()
        await source.stop()
    assert confirmed <= int(end[0])
