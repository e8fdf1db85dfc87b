"""One key-hold rule: a held or parked event holds every later event of its key, on any topic.

The same scenarios run against the in-memory fake (`relay.testing.InMemorySource`), the
real poll source and the real WAL source on PostgreSQL, with the same publisher, and must
end the same way: only the events after a key's first parked row wait (an earlier row of
the key goes), and a row the operator releases goes before the later events of its key.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence

import psycopg
import pytest

from relay import admin
from relay.config import Settings
from relay.events import EventState, OutboxEvent, PublishFailure
from relay.loop import LoopConfig, RelayLoop
from relay.poll import PollSource
from relay.source import Source
from relay.testing import InMemorySource, RecordingPublisher, make_event
from relay.wal import WalSource
from relay.wal import _source as wal_source
from tests.integration.poll_stack import (
    all_sent,
    async_wait_until,
    payload_n,
    relay_in_process,
    states,
)
from tests.integration.test_wal_relay import wal_settings
from tests.support import consume

CONFIG = LoopConfig(batch_size=4, poll_interval_s=0.05, park_after_attempts=2, backoff_base_s=0.001)
REFUSED = PublishFailure("TopicAuthorizationFailedError: not authorised", retriable=False)
PENDING, PARKED, SENT = EventState.PENDING, EventState.PARKED, EventState.SENT
#: (key, topic, state) of the rows, ids 1.. in this order. Row 1 goes to a topic the
#: broker refuses.
ROWS = [
    ("a", "refused", PENDING),
    ("a", "orders", PENDING),
    ("b", "orders", PENDING),
    ("a", "payments", PENDING),
    ("c", "payments", PENDING),
    ("a", "orders", PENDING),
    ("b", "payments", PENDING),
]
#: A key with two parked rows (2 and 5) on other topics than the rows around them, and a
#: row of the key before the first (1, which goes).
TWO_PARKED = [
    ("a", "orders", PENDING),
    ("a", "payments", PARKED),
    ("a", "orders", PENDING),
    ("b", "orders", PENDING),
    ("a", "refunds", PARKED),
    ("a", "payments", PENDING),
]
#: How long a source gets to publish what it must not (a held row): many fetches of the
#: loop, and of the WAL source's re-reads of the parked rows (`PARKED_REFRESH_S` below).
SETTLE_S = 0.5


@dataclasses.dataclass
class Outbox:
    """One of the sources over a scenario's rows, and how to look at and change them."""

    source: Source
    states: Callable[[], dict[int, EventState]]
    #: An operator changes a row's topic (before releasing it).
    fix_topic: Callable[[int, str], None]
    #: An operator releases a parked row (``outbox-relay retry``).
    release: Callable[[int], None]


def fake_outbox(rows: Sequence[tuple[str, str, EventState]]) -> Outbox:
    fake = InMemorySource([make_event(n, key, topic) for n, (key, topic, _) in enumerate(rows, 1)])
    for n, (_, _, state) in enumerate(rows, 1):
        fake.rows[n].state = state

    def fix_topic(id_: int, topic: str) -> None:
        fake.rows[id_].event = dataclasses.replace(fake.rows[id_].event, topic=topic)

    return Outbox(
        fake, lambda: {id_: row.state for id_, row in fake.rows.items()}, fix_topic, fake.release
    )


def table_outbox(
    source: Source, settings: Settings, rows: Sequence[tuple[str, str, EventState]]
) -> Outbox:
    """`rows` in the outbox table, parked ones as the relay parks them."""
    url = settings.database_url
    with psycopg.connect(url) as conn:
        for key, topic, state in rows:
            row = conn.execute(
                "INSERT INTO outbox (topic, key, payload) VALUES (%s, %s, '{}') RETURNING id",
                (topic, key),
            ).fetchone()
            assert row is not None
            if state is PARKED:
                conn.execute(
                    "UPDATE outbox SET state = 'parked', parked_at = now(), attempts = 2, "
                    "last_error = 'parked before the test' WHERE id = %s",
                    row,
                )

    def states() -> dict[int, EventState]:
        with psycopg.connect(url) as conn:
            found = conn.execute("SELECT id, state FROM outbox ORDER BY id").fetchall()
        return {id_: EventState(state) for id_, state in found}

    def fix_topic(id_: int, topic: str) -> None:
        with psycopg.connect(url) as conn:
            conn.execute("UPDATE outbox SET topic = %s WHERE id = %s", (topic, id_))

    def release(id_: int) -> None:
        with admin.connect(settings) as conn:
            admin.retry(conn, settings, admin.Selection(after_id=id_ - 1, before_id=id_ + 1))

    return Outbox(source, states, fix_topic, release)


OpenOutbox = Callable[
    [Sequence[tuple[str, str, EventState]]], contextlib.AbstractAsyncContextManager[Outbox]
]


@pytest.fixture(params=["fake", "poll", "wal"])
def open_outbox(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> OpenOutbox:
    """Opens the scenario's rows in the fake, or in the table under the poll or WAL source."""

    @contextlib.asynccontextmanager
    async def opened(rows: Sequence[tuple[str, str, EventState]]) -> AsyncIterator[Outbox]:
        if request.param == "fake":
            yield fake_outbox(rows)
            return
        settings: Settings = request.getfixturevalue("settings")
        source: Source
        if request.param == "poll":
            source = PollSource(settings)
        else:
            # Releases are noticed when the WAL source re-reads the parked rows.
            monkeypatch.setattr(wal_source, "PARKED_REFRESH_S", 0.05)
            settings = wal_settings(settings)
            source = WalSource(settings)
        made = table_outbox(source, settings, rows)
        await source.start()
        try:
            yield made
        finally:
            await source.stop()

    return opened


async def run_until(
    loop: RelayLoop, what: str, done: Callable[[], bool], timeout_s: float = 20
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        async with asyncio.timeout(timeout_s):
            while not await asyncio.to_thread(done):
                assert not task.done(), task.exception()
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def run_for(loop: RelayLoop, seconds: float) -> None:
    """Run the loop for `seconds` (for what must not happen meanwhile)."""
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    await asyncio.sleep(seconds)
    assert not task.done(), task.exception()
    stop.set()
    await asyncio.wait_for(task, 10)


def in_states(outbox: Outbox, wanted: dict[int, EventState]) -> Callable[[], bool]:
    return lambda: outbox.states() == wanted


def of_key(publisher: RecordingPublisher, key: str) -> list[int]:
    return [event.id for event in publisher.published if event.key == key]


async def test_an_event_refused_for_its_topic_holds_its_key_on_every_topic(
    open_outbox: OpenOutbox,
) -> None:
    refused: list[int] = []

    def refuse_topic(event: OutboxEvent) -> PublishFailure | None:
        if event.topic != "refused":
            return None
        refused.append(event.id)
        return REFUSED

    publisher = RecordingPublisher(refuse_topic)
    async with open_outbox(ROWS) as outbox:
        loop = RelayLoop(outbox.source, publisher, CONFIG)
        waiting = {1: PARKED, 2: PENDING, 3: SENT, 4: PENDING, 5: SENT, 6: PENDING, 7: SENT}
        await run_until(
            loop, "the other keys sent, the refused one parked", in_states(outbox, waiting)
        )
        assert of_key(publisher, "a") == []
        assert refused == [1] * CONFIG.park_after_attempts

        # Released as it is, it gets every attempt again (the release reset them) and
        # parks again; the key still waits.
        outbox.release(1)
        await run_until(
            loop,
            "parked again",
            lambda: len(refused) == 2 * CONFIG.park_after_attempts and outbox.states() == waiting,
        )
        await run_for(loop, SETTLE_S)
        assert refused == [1] * 2 * CONFIG.park_after_attempts
        assert outbox.states() == waiting

        # The operator fixes the parked event's topic and releases it: it goes first.
        outbox.fix_topic(1, "orders")
        outbox.release(1)
        await run_until(loop, "everything sent", lambda: set(outbox.states().values()) == {SENT})
    assert of_key(publisher, "a") == [1, 2, 4, 6]


async def test_of_two_parked_rows_the_later_released_waits_behind_the_earlier(
    open_outbox: OpenOutbox,
) -> None:
    publisher = RecordingPublisher()
    async with open_outbox(TWO_PARKED) as outbox:
        loop = RelayLoop(outbox.source, publisher, CONFIG)
        waiting = {1: SENT, 2: PARKED, 3: PENDING, 4: SENT, 5: PARKED, 6: PENDING}
        await run_until(loop, "the rows before the first parked one", in_states(outbox, waiting))
        outbox.release(5)
        await run_for(loop, SETTLE_S)
        assert outbox.states() == waiting | {5: PENDING}
        outbox.release(2)
        await run_until(loop, "everything sent", lambda: set(outbox.states().values()) == {SENT})
    assert of_key(publisher, "a") == [1, 2, 3, 5, 6]


async def test_of_two_parked_rows_the_earlier_released_goes_up_to_the_later(
    open_outbox: OpenOutbox,
) -> None:
    publisher = RecordingPublisher()
    async with open_outbox(TWO_PARKED) as outbox:
        loop = RelayLoop(outbox.source, publisher, CONFIG)
        await run_until(
            loop,
            "the rows before the first parked one",
            in_states(outbox, {1: SENT, 2: PARKED, 3: PENDING, 4: SENT, 5: PARKED, 6: PENDING}),
        )
        outbox.release(2)
        await run_until(
            loop,
            "the rows before the second parked one",
            in_states(outbox, {1: SENT, 2: SENT, 3: SENT, 4: SENT, 5: PARKED, 6: PENDING}),
        )
        assert of_key(publisher, "a") == [1, 2, 3]
        outbox.release(5)
        await run_until(loop, "everything sent", lambda: set(outbox.states().values()) == {SENT})
    assert of_key(publisher, "a") == [1, 2, 3, 5, 6]


async def test_through_kafka_an_event_routed_to_an_invalid_topic_holds_its_key(
    settings: Settings, topic: str
) -> None:
    settings = dataclasses.replace(
        settings, topic_template="{aggregate_type}", park_after_attempts=2
    )
    url = settings.database_url
    with psycopg.connect(url) as conn:
        for n, (key, aggregate_type) in enumerate(
            [("a", "not a topic!"), ("a", None), ("b", None), ("a", None)]
        ):
            conn.execute(
                "INSERT INTO outbox (topic, key, payload, aggregate_type) "
                "VALUES (%s, %s, jsonb_build_object('n', %s::int), %s)",
                (topic, key, n, aggregate_type),
            )
    async with relay_in_process(settings):
        await async_wait_until(
            "b sent, the first parked",
            lambda: states(url) == {"sent": 1, "parked": 1, "pending": 2},
            30,
        )
        with psycopg.connect(url) as conn:
            conn.execute("UPDATE outbox SET aggregate_type = NULL, state = 'pending' WHERE id = 1")
        await async_wait_until("all sent", all_sent(url, 4), 30)
    records = await consume(settings.bootstrap_servers, [topic], expected=4)
    a = sorted((r for r in records if r.key == "a"), key=lambda r: r.offset)
    assert [payload_n(r) for r in a] == [0, 1, 3]
