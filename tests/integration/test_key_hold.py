"""One key-hold rule: a held or parked event holds every later event of its key, on any topic.

The same scenario runs against the in-memory fake (`relay.testing.InMemorySource`) and the
real poll source on PostgreSQL, with the same publisher, and must end the same way.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable

import psycopg
import pytest

from relay.config import Settings
from relay.events import EventState, OutboxEvent, PublishFailure
from relay.loop import LoopConfig, RelayLoop
from relay.poll import PollSource
from relay.source import Source
from relay.testing import InMemorySource, RecordingPublisher, make_event
from tests.integration.poll_stack import (
    all_sent,
    async_wait_until,
    payload_n,
    relay_in_process,
    states,
)
from tests.support import consume

CONFIG = LoopConfig(batch_size=4, poll_interval_s=0.05, park_after_attempts=2, backoff_base_s=0.001)
REFUSED = PublishFailure("TopicAuthorizationFailedError: not authorised", retriable=False)
#: (key, topic) of the rows, ids 1.. in this order. Row 1 goes to a topic the broker refuses.
ROWS = [
    ("a", "refused"),
    ("a", "orders"),
    ("b", "orders"),
    ("a", "payments"),
    ("c", "payments"),
    ("a", "orders"),
    ("b", "payments"),
]


def refuse_topic(event: OutboxEvent) -> PublishFailure | None:
    return REFUSED if event.topic == "refused" else None


@dataclasses.dataclass
class Outbox:
    """One of the two sources over the scenario's rows, and how to look at and fix them."""

    source: Source
    states: Callable[[], dict[int, EventState]]
    fix_topic: Callable[[int, str], None]


def fake_outbox() -> Outbox:
    fake = InMemorySource([make_event(n, key, topic) for n, (key, topic) in enumerate(ROWS, 1)])

    def fix_topic(id_: int, topic: str) -> None:
        fake.rows[id_].event = dataclasses.replace(fake.rows[id_].event, topic=topic)
        fake.release(id_)

    return Outbox(fake, lambda: {id_: row.state for id_, row in fake.rows.items()}, fix_topic)


def poll_outbox(settings: Settings) -> Outbox:
    url = settings.database_url
    with psycopg.connect(url) as conn:
        for key, topic in ROWS:
            conn.execute(
                "INSERT INTO outbox (topic, key, payload) VALUES (%s, %s, '{}')", (topic, key)
            )

    def states() -> dict[int, EventState]:
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT id, state FROM outbox ORDER BY id").fetchall()
        return {id_: EventState(state) for id_, state in rows}

    def fix_topic(id_: int, topic: str) -> None:
        with psycopg.connect(url) as conn:
            conn.execute(
                "UPDATE outbox SET topic = %s, state = 'pending' WHERE id = %s", (topic, id_)
            )

    return Outbox(PollSource(settings), states, fix_topic)


@pytest.fixture(params=["fake", "poll"])
async def outbox(request: pytest.FixtureRequest) -> AsyncIterator[Outbox]:
    if request.param == "fake":
        yield fake_outbox()
        return
    settings: Settings = request.getfixturevalue("settings")
    made = poll_outbox(settings)
    await made.source.start()
    try:
        yield made
    finally:
        await made.source.stop()


async def run_until(loop: RelayLoop, what: str, done: Callable[[], bool]) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        async with asyncio.timeout(20):
            while not await asyncio.to_thread(done):
                assert not task.done(), task.exception()
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_an_event_refused_for_its_topic_holds_its_key_on_every_topic(outbox: Outbox) -> None:
    publisher = RecordingPublisher(refuse_topic)
    loop = RelayLoop(outbox.source, publisher, CONFIG)
    others = {3, 5, 7}
    await run_until(
        loop,
        "the other keys sent and the refused event parked",
        lambda: (
            {i for i, s in outbox.states().items() if s is EventState.SENT} == others
            and outbox.states()[1] is EventState.PARKED
        ),
    )
    now = outbox.states()
    assert [now[i] for i in (2, 4, 6)] == [EventState.PENDING] * 3
    assert all(event.key != "a" for event in publisher.published)

    # The operator fixes the parked event's topic and releases it: it goes first.
    outbox.fix_topic(1, "orders")
    await run_until(
        loop,
        "everything sent",
        lambda: set(outbox.states().values()) == {EventState.SENT},
    )
    assert [e.id for e in publisher.published if e.key == "a"] == [1, 2, 4, 6]


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
