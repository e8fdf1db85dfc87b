"""The poll source against a real outbox: scans, late commits, releases, settling rows."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import psycopg
import pytest

from relay.config import OnSent, Settings
from relay.events import Acknowledgement, FailedEvent, PublishFailure
from relay.poll import PollSource


@pytest.fixture
async def source(settings: Settings) -> AsyncIterator[PollSource]:
    poll = PollSource(settings)
    await poll.start()
    yield poll
    await poll.stop()


def insert(database_url: str, *keys: str | None) -> list[int]:
    with psycopg.connect(database_url) as conn:
        return [
            conn.execute(
                "INSERT INTO outbox (topic, key, payload) VALUES ('t', %s, '{}') RETURNING id",
                (key,),
            ).fetchone()[0]  # type: ignore[index]
            for key in keys
        ]


def state(database_url: str, id_: int) -> tuple[str, int]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT state, attempts FROM outbox WHERE id = %s", (id_,)).fetchone()
    assert row is not None
    return row[0], row[1]


async def test_a_row_committed_after_later_ids_were_read_is_found_by_the_next_scan(
    settings: Settings, source: PollSource
) -> None:
    with psycopg.connect(settings.database_url) as late:
        # Takes id 1 now, commits only after id 2 was fetched.
        late.execute("INSERT INTO outbox (topic, key, payload) VALUES ('t', 'a', '{}')")
        [second] = insert(settings.database_url, "b")
        assert [event.id for event in await source.fetch(10)] == [second]
        late.commit()
    batch = await source.fetch(10)
    assert [event.id for event in batch] == [second - 1]


async def test_a_new_scan_leaves_out_the_rows_in_flight(
    settings: Settings, source: PollSource
) -> None:
    first = insert(settings.database_url, "a", "b")
    assert [event.id for event in await source.fetch(10)] == first
    more = insert(settings.database_url, "a")
    # Not acknowledged yet: the next scan must not return them again.
    assert [event.id for event in await source.fetch(10)] == more


async def test_a_release_in_the_middle_of_a_scan_goes_before_the_keys_later_events(
    settings: Settings, source: PollSource
) -> None:
    ids = insert(settings.database_url, "x1", "bad", *[f"x{n}" for n in range(2, 8)], "bad")
    parked, waiting = ids[1], ids[-1]
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("UPDATE outbox SET state = 'parked' WHERE id = %s", (parked,))
    first = await source.fetch(3)  # a full batch: the scan goes on from its last id
    assert parked not in [event.id for event in first]
    with psycopg.connect(settings.database_url) as conn:  # the operator's retry
        conn.execute("UPDATE outbox SET state = 'pending' WHERE id = %s", (parked,))
    second = [event.id for event in await source.fetch(10)]
    assert parked in second
    assert waiting in second
    assert second.index(parked) < second.index(waiting)


async def test_acknowledge_marks_sent_counts_attempts_and_parks(
    settings: Settings, source: PollSource
) -> None:
    sent_id, failed_id, parked_id, unsettled_id = insert(settings.database_url, "a", "b", "c", "d")
    sent, failed, parked, unsettled = await source.fetch(10)
    error = PublishFailure("MessageSizeTooLargeError: too big", retriable=False)
    await source.acknowledge(
        Acknowledgement(
            sent=(sent,),
            failed=(
                FailedEvent(failed, error, 1, park=False),
                FailedEvent(parked, error, 5, park=True),
            ),
            unsettled=(unsettled,),
        )
    )
    assert state(settings.database_url, sent_id) == ("sent", 0)
    assert state(settings.database_url, failed_id) == ("pending", 1)
    assert state(settings.database_url, parked_id) == ("parked", 5)
    assert state(settings.database_url, unsettled_id) == ("pending", 0)
    backlog = await source.backlog()
    assert (backlog.pending_events, backlog.parked_events) == (2, 1)


async def test_on_sent_delete_deletes(settings: Settings) -> None:
    [id_] = insert(settings.database_url, "a")
    source = PollSource(dataclasses.replace(settings, on_sent=OnSent.DELETE))
    await source.start()
    try:
        batch = await source.fetch(10)
        await source.acknowledge(Acknowledgement(sent=tuple(batch)))
    finally:
        await source.stop()
    with psycopg.connect(settings.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM outbox WHERE id = %s", (id_,)).fetchone() == (0,)
