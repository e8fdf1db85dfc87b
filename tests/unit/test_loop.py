"""The relay loop against the in-memory source and the recording publisher."""

# ruff: noqa: ASYNC110 - polling the fakes' state is the simplest honest wait here

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from relay.events import Acknowledgement, EventState, OutboxEvent, PublishFailure
from relay.loop import LoopConfig, RelayLoop, _observe_many
from relay.metrics import Metrics
from relay.testing import InMemorySource, RecordingPublisher, make_event

CONFIG = LoopConfig(batch_size=4, poll_interval_s=0.05, park_after_attempts=3, backoff_base_s=0.001)
POISON = PublishFailure("MessageSizeTooLargeError: too big", retriable=False)
RETRY = PublishFailure("KafkaTimeoutError: no answer", retriable=True)


async def run_until(loop: RelayLoop, done: Callable[[], bool], timeout_s: float = 10.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        async with asyncio.timeout(timeout_s):
            while not done():
                assert not task.done(), task.exception()
                await asyncio.sleep(0.005)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


def sent_ids(source: InMemorySource) -> set[int]:
    return {id_ for id_, row in source.rows.items() if row.state is EventState.SENT}


def per_key(events: Sequence[OutboxEvent]) -> dict[str | None, list[int]]:
    keys: dict[str | None, list[int]] = {}
    for event in events:
        keys.setdefault(event.key, []).append(event.id)
    return keys


def last_copies_in_order(events: Sequence[OutboxEvent]) -> dict[str | None, list[int]]:
    """Per key, the ids in the order of their last copy (what a deduplicating consumer keeps)."""
    result = {}
    for key, ids in per_key(events).items():
        last = {id_: position for position, id_ in enumerate(ids)}
        result[key] = sorted(last, key=last.__getitem__)
    return result


async def test_every_event_is_published_in_order_and_marked_sent() -> None:
    events = [make_event(n, key=f"k{n % 3}") for n in range(1, 23)]
    source, publisher = InMemorySource(events), RecordingPublisher()
    metrics = Metrics()
    loop = RelayLoop(source, publisher, CONFIG, metrics=metrics)
    await run_until(loop, lambda: len(sent_ids(source)) == 22)
    assert [event.id for event in publisher.published] == list(range(1, 23))
    assert loop.stats.published == 22
    assert metrics.events_published.labels(topic="t")._value.get() == 22


async def test_events_added_later_are_picked_up() -> None:
    source, publisher = InMemorySource([make_event(1)]), RecordingPublisher()
    loop = RelayLoop(source, publisher, CONFIG)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    async with asyncio.timeout(5):
        while sent_ids(source) != {1}:
            await asyncio.sleep(0.01)
        source.add(make_event(2), make_event(3))
        while sent_ids(source) != {1, 2, 3}:
            await asyncio.sleep(0.01)
    stop.set()
    await task


async def test_a_retriable_failure_is_retried_without_reordering_its_key() -> None:
    events = [make_event(n, key=f"k{n % 2}") for n in range(1, 13)]
    failures = {5: 2}  # event 5 fails twice, then passes

    def rule(event: OutboxEvent) -> PublishFailure | None:
        if failures.get(event.id, 0) > 0:
            failures[event.id] -= 1
            return RETRY
        return None

    source, publisher = InMemorySource(events), RecordingPublisher(rule)
    loop = RelayLoop(source, publisher, CONFIG)
    await run_until(loop, lambda: len(sent_ids(source)) == 12)
    # Per key, every event reached Kafka, and no event of k1 went before event 5.
    by_key = per_key(publisher.published)
    assert by_key["k1"] == [1, 3, 5, 7, 9, 11]
    assert sorted(set(by_key["k0"])) == [2, 4, 6, 8, 10, 12]
    assert last_copies_in_order(publisher.published)["k0"] == [2, 4, 6, 8, 10, 12]
    assert source.rows[5].attempts == 0  # broker trouble is not the event's fault


async def test_a_poison_event_is_parked_and_its_key_waits_while_others_flow() -> None:
    events = [make_event(n, key="bad" if n in {2, 5, 9} else f"k{n}") for n in range(1, 12)]
    source = InMemorySource(events)
    publisher = RecordingPublisher(lambda event: POISON if event.id == 2 else None)
    metrics = Metrics()
    loop = RelayLoop(source, publisher, CONFIG, metrics=metrics)
    others = {n for n in range(1, 12) if n not in {2, 5, 9}}
    await run_until(
        loop, lambda: sent_ids(source) == others and source.state(2) is EventState.PARKED
    )
    await asyncio.sleep(0.1)  # the waiting events stay waiting
    assert source.state(5) is EventState.PENDING
    assert source.state(9) is EventState.PENDING
    assert source.rows[2].attempts == 3
    assert source.rows[2].last_error == POISON.error
    assert all(event.key != "bad" for event in publisher.published)
    assert loop.stats.parked == 1
    errors = {
        sample.labels["error"]: sample.value
        for family in metrics.publish_errors.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert errors == {"MessageSizeTooLargeError": 3}  # held-back events are not errors
    assert metrics.events_parked.labels(topic="t")._value.get() == 1


async def test_a_released_parked_event_goes_before_the_events_that_waited() -> None:
    events = [make_event(n, key="bad" if n in {2, 5, 9} else f"k{n}") for n in range(1, 12)]
    poisoned = {2}
    source = InMemorySource(events)
    publisher = RecordingPublisher(lambda event: POISON if event.id in poisoned else None)
    loop = RelayLoop(source, publisher, CONFIG)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    async with asyncio.timeout(5):
        while source.state(2) is not EventState.PARKED:
            await asyncio.sleep(0.01)
        poisoned.clear()  # the operator fixed the cause
        source.release(2)
        while sent_ids(source) != set(range(1, 12)):
            await asyncio.sleep(0.01)
    stop.set()
    await task
    assert per_key(publisher.published)["bad"] == [2, 5, 9]


async def test_with_poison_skip_later_events_of_the_key_flow() -> None:
    events = [make_event(n, key="bad" if n in {2, 5} else f"k{n}") for n in range(1, 8)]
    source = InMemorySource(events, park=False)
    publisher = RecordingPublisher(lambda event: POISON if event.id == 2 else None)
    loop = RelayLoop(source, publisher, CONFIG)
    await run_until(loop, lambda: sent_ids(source) == {1, 3, 4, 5, 6, 7})
    assert source.state(2) is EventState.PARKED


async def test_a_lost_database_connection_while_fetching_is_survived() -> None:
    source, publisher = InMemorySource([make_event(n) for n in range(1, 10)]), RecordingPublisher()
    source.fail_next = "connection lost"
    loop = RelayLoop(source, publisher, CONFIG)
    await run_until(loop, lambda: len(sent_ids(source)) == 9)
    assert [event.id for event in publisher.published] == list(range(1, 10))


async def test_a_failed_acknowledgement_republishes_instead_of_losing() -> None:
    source, publisher = InMemorySource([make_event(n) for n in range(1, 10)]), RecordingPublisher()
    loop = RelayLoop(source, publisher, CONFIG)

    original = source.acknowledge
    calls = 0

    async def flaky(acknowledgement: Acknowledgement) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            source.fail_next = "connection lost"
        await original(acknowledgement)

    source.acknowledge = flaky  # type: ignore[method-assign]
    await run_until(loop, lambda: len(sent_ids(source)) == 9)
    ids = [event.id for event in publisher.published]
    assert set(ids) == set(range(1, 10))
    assert ids.count(1) == 2  # the unmarked batch went again: a duplicate, never a loss
    assert last_copies_in_order(publisher.published)["k"] == list(range(1, 10))


async def test_stop_while_idle_returns_promptly() -> None:
    loop = RelayLoop(InMemorySource(), RecordingPublisher(), LoopConfig(poll_interval_s=30))
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 1)


class ScanWaitingSource(InMemorySource):
    """Like the poll source: a fetch that starts a new scan waits for every acknowledgement."""

    async def fetch(self, max_events: int) -> Sequence[OutboxEvent]:
        while self._cursor == 0 and self._in_flight:
            await asyncio.sleep(0.001)
        return await super().fetch(max_events)


async def test_a_failed_acknowledgement_does_not_leave_a_fetch_ahead_waiting_forever() -> None:
    source = ScanWaitingSource([make_event(n, key=f"k{n}") for n in range(1, 4)])
    publisher = RecordingPublisher()
    loop = RelayLoop(source, publisher, CONFIG)
    original = source.acknowledge
    calls = 0

    async def failing_once(acknowledgement: Acknowledgement) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            source.fail_next = "connection lost"
        await original(acknowledgement)

    source.acknowledge = failing_once  # type: ignore[method-assign]
    await run_until(loop, lambda: len(sent_ids(source)) == 3, timeout_s=5)


def test_latencies_of_a_batch_land_in_the_buckets_observe_would_pick() -> None:
    values = [0.0, 0.001, 0.0011, 0.004, 0.02, 0.5, 1.0, 7.0, 100.0, 0.0025]
    one_by_one, in_bulk = Metrics(), Metrics()
    for value in values:
        one_by_one.commit_to_ack.observe(value)
    _observe_many(in_bulk.commit_to_ack, values)

    def samples(metrics: Metrics) -> list[tuple[str, dict[str, str], float]]:
        return [
            (sample.name, sample.labels, sample.value)
            for metric in metrics.commit_to_ack.collect()
            for sample in metric.samples
            if not sample.name.endswith("_created")
        ]

    assert samples(in_bulk) == samples(one_by_one)


async def test_an_event_retried_until_parked_does_not_slow_the_other_events_down() -> None:
    """Issue 10, finding 4: the backoff grew with every batch holding the failing event,
    up to `backoff_max_s`, while the other events of those batches were sent."""
    config = LoopConfig(
        batch_size=4, poll_interval_s=0.05, park_after_attempts=8, backoff_base_s=0.2
    )
    events = [make_event(n, key=f"k{n % 3}", topic="gone" if n == 1 else "t") for n in range(1, 40)]
    source = InMemorySource(events)
    refused = PublishFailure(
        "UnknownTopicOrPartitionError: topic 'gone' does not exist", retriable=False
    )
    publisher = RecordingPublisher(lambda event: refused if event.topic == "gone" else None)
    loop = RelayLoop(source, publisher, config)
    others = {n for n in range(1, 40) if n % 3 != 1}
    # Before: at least 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 3.2 + 6.4 s of backoff before parking.
    started = asyncio.get_running_loop().time()
    await run_until(
        loop, lambda: sent_ids(source) == others and source.state(1) is EventState.PARKED
    )
    assert asyncio.get_running_loop().time() - started < 4.0
    assert source.rows[1].attempts == 8
