"""The WAL source's decoded queue is capped by bytes too, and its byte count never drifts."""

from __future__ import annotations

import time
from typing import Any

import pytest

from relay.config import Mode, Settings
from relay.events import OutboxEvent
from relay.wal import WalSource, WalTransaction
from relay.wal import _source as wal_source
from relay.wal._source import queue_has_room, queued_size


class _Open:
    """Stands for a connection that is up (fetch only asks whether it broke)."""

    broken = False


def event(id_: int, key: str | None, value: bytes | None, lsn: int = 100) -> OutboxEvent:
    return OutboxEvent(
        id=id_,
        event_id=str(id_),
        topic="t",
        key=key,
        value=value,
        headers=(("event_id", str(id_).encode()), ("traceparent", b"00-ab")),
        lsn=lsn,
    )


def connected_source() -> WalSource:
    source = WalSource(Settings(mode=Mode.WAL))
    connected: Any = _Open()
    source._replication = connected
    source._conn = connected
    source._sweep_conn = connected
    source._parked_checked_s = time.monotonic()  # no parked-row refresh in these fetches
    return source


def counted_right(source: WalSource) -> bool:
    return source._queued_bytes == queued_size(source._queue)


def test_the_size_counts_value_key_and_headers() -> None:
    assert queued_size([event(7, "ab", b"xyz")]) == 3 + 2 + 1 + 5
    assert queued_size([event(7, None, None)]) == 1 + 5
    assert queued_size([]) == 0


def test_either_cap_stops_reading_but_an_empty_queue_always_has_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wal_source, "MAX_QUEUED_EVENTS", 10)
    monkeypatch.setattr(wal_source, "MAX_QUEUED_BYTES", 1000)
    assert queue_has_room(9, 999)
    assert not queue_has_room(10, 0)
    assert not queue_has_room(1, 1000)
    assert queue_has_room(0, 5000)  # a transaction over the cap went through: next one


async def test_the_byte_count_follows_accept_fetch_rewind_and_hold() -> None:
    source = connected_source()
    big = [event(i, f"k{i % 2}", b"x" * 100 * i, lsn=100) for i in range(1, 6)]
    message = event(0, "held", b"y" * 50, lsn=200)
    await source._accept(
        [
            WalTransaction(100, 150, 0, tuple(big)),
            WalTransaction(200, 250, 0, (message, event(6, "k0", b"z", lsn=200))),
            WalTransaction(300, 350, 0, (event(7, "k1", b"w" * 70, lsn=300),)),
        ]
    )
    assert source._queued_bytes == queued_size([*big, message]) + 9 + 78
    assert counted_right(source)
    first = await source.fetch(2)
    assert [e.id for e in first] == [1, 2]
    assert counted_right(source)
    await source.rewind()  # a failed publish: the batch goes back in front
    assert [e.id for e in source._queue][:2] == [1, 2]
    assert counted_right(source)

    held: list[OutboxEvent] = []

    async def hold(e: OutboxEvent) -> None:
        held.append(e)

    source._hold_message = hold  # type: ignore[method-assign,assignment]
    source._parked_keys = {"held": 0}  # the message's key waits behind a parked event
    got = await source.fetch(6)
    assert [e.id for e in got] == [1, 2, 3, 4, 5, 6]
    assert held == [message]
    assert source._queued_bytes == 78  # event 7's
    assert [e.id for e in await source.fetch(10)] == [7]
    assert source._queued_bytes == 0
