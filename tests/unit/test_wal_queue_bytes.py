"""The WAL source caps its decoded events by bytes too, and its byte count never drifts."""

from __future__ import annotations

import time
from typing import Any

import pytest

from relay.config import Mode, OnSent, Settings
from relay.events import Acknowledgement, FailedEvent, OutboxEvent, PublishFailure
from relay.wal import WalSource, WalTransaction
from relay.wal import _source as wal_source
from relay.wal._source import queue_has_room, queued_size


class _Open:
    """Stands for a connection that is up, and a stream that has not started."""

    broken = False
    closed = False
    streaming = False

    async def execute(self, *_args: object) -> None:
        """Recording a failure or parking a row: nothing to check here."""


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
    # No rows to mark: acknowledging needs no database.
    source = WalSource(Settings(mode=Mode.WAL, on_sent=OnSent.NONE))
    connected: Any = _Open()
    source._replication = connected
    source._conn = connected
    source._sweep_conn = connected
    source._parked_checked_s = time.monotonic()  # no parked-row refresh in these fetches
    return source


def counted_right(source: WalSource) -> bool:
    """The count is that of the events queued and of those fetched and not settled."""
    held = queued_size(source._queue) + queued_size(source._fetched.unsettled())
    return source._held_bytes == held


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


async def test_the_byte_count_follows_accept_fetch_settle_rewind_and_hold() -> None:
    source = connected_source()
    big = [event(i, f"k{i}", b"x" * 100 * i, lsn=100) for i in range(1, 6)]
    message = event(0, "held", b"y" * 50, lsn=200)
    await source._accept(
        [
            WalTransaction(100, 150, 0, tuple(big)),
            WalTransaction(200, 250, 0, (message, event(6, "k0", b"z", lsn=200))),
            WalTransaction(300, 350, 0, (event(7, "k7", b"w" * 70, lsn=300),)),
        ]
    )
    assert source._held_bytes == queued_size([*big, message]) + 9 + 78
    first = await source.fetch(3)
    assert [e.id for e in first] == [1, 2, 3]
    assert counted_right(source)  # in flight, still held
    failure = PublishFailure(error="RecordTooLarge", retriable=False)
    await source.acknowledge(
        Acknowledgement(
            sent=(first[0],),
            failed=(
                FailedEvent(first[1], failure, attempts=1, park=False),  # retried later
                FailedEvent(first[2], failure, attempts=9, park=True),  # no later k3
            ),
        )
    )
    assert counted_right(source)
    await source.rewind()  # a failed publish: event 2 goes back in front
    assert [e.id for e in source._queue][:2] == [2, 4]
    assert counted_right(source)

    held: list[OutboxEvent] = []

    async def hold(e: OutboxEvent) -> None:
        held.append(e)

    source._hold_message = hold  # type: ignore[method-assign,assignment]
    source._parked_keys["held"] = 0  # the message's key waits behind a parked event
    got = await source.fetch(4)
    assert [e.id for e in got] == [2, 4, 5, 6]
    assert held == [message]
    assert counted_right(source)
    await source.acknowledge(Acknowledgement(sent=tuple(got)))
    assert source._held_bytes == 78  # event 7's
    rest = await source.fetch(10)
    assert [e.id for e in rest] == [7]
    await source.acknowledge(Acknowledgement(sent=tuple(rest)))
    assert source._held_bytes == 0


def test_a_sweep_asks_for_as_many_rows_as_fit_in_its_chunk_bytes() -> None:
    chunk_bytes = wal_source.SWEEP_CHUNK_BYTES
    assert wal_source.next_sweep_chunk(100, 100 * 200) == wal_source.SWEEP_CHUNK  # small rows
    assert wal_source.next_sweep_chunk(100, 100 * 10_000) == chunk_bytes // 10_000
    assert wal_source.next_sweep_chunk(10, 10 * chunk_bytes * 4) == 1  # huge rows: one a time
    assert wal_source.next_sweep_chunk(0, 0) == wal_source.SWEEP_CHUNK
