"""Issue 10, finding 5: a record batch too large for its topic is split, never charged.

The test broker (tansu 0.6.0) has no ``max.message.bytes``: it refuses no record batch for
its size (its only bound is a 1 GiB frame), so the broker's refusal is played by the fake
producer of `tests.unit.test_kafka_publisher`, which refuses batches over a byte limit with
aiokafka's own `MessageSizeTooLargeError`, as Kafka answers ``MESSAGE_TOO_LARGE``.
"""

from __future__ import annotations

import asyncio
import collections

from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError
from hypothesis import given, settings
from hypothesis import strategies as st

from relay import decisions
from relay.testing import make_event
from tests.unit.test_kafka_publisher import FakeBatch, FakeProducer, kafka_publisher, refuse_over


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 400), min_size=1, max_size=40),
    limit=st.integers(40, 600),
    partitions=st.integers(1, 3),
    capacity=st.integers(1, 12),
)
def test_only_records_too_large_alone_are_charged_and_order_holds(
    sizes: list[int], limit: int, partitions: int, capacity: int
) -> None:
    """Per partition: everything before its first record over the limit is sent, in order;
    that record is charged; the rest of the partition waits (retriable, not charged)."""
    producer = FakeProducer(partitions=partitions, capacity=capacity, fail=refuse_over(limit))
    events = [make_event(n, key=f"k{n}", value=b"x" * size) for n, size in enumerate(sizes)]
    result = asyncio.run(kafka_publisher(producer).publish(events))

    by_partition: dict[int, list[int]] = {}
    for n, event in enumerate(events):
        assert event.key is not None
        by_partition.setdefault(decisions.partition_for(event.key.encode(), partitions), []).append(
            n
        )
    delivered: dict[int, list[bytes | None]] = {}
    for _, partition, key in producer.delivered:
        delivered.setdefault(partition, []).append(key)
    for partition, indexes in by_partition.items():
        too_large = [n for n in indexes if sizes[n] > limit]
        first_bad = indexes.index(too_large[0]) if too_large else len(indexes)
        sent, rest = indexes[:first_bad], indexes[first_bad:]
        assert delivered.get(partition, []) == [f"k{n}".encode() for n in sent]
        assert all(result.failures[n] is None for n in sent)
        for position, n in enumerate(rest):
            failure = result.failures[n]
            assert failure is not None
            # Only the record refused alone is charged; the others go again next call.
            assert failure.retriable is (position > 0), failure


def test_a_record_list_too_large_is_split_too() -> None:
    def fail(_topic: str, _partition: int, batch: FakeBatch) -> Exception | None:
        return RecordListTooLargeError() if len(batch.records) > 1 else None

    producer = FakeProducer(partitions=1, fail=fail)
    events = [make_event(n, key="a") for n in range(1, 6)]
    result = asyncio.run(kafka_publisher(producer).publish(events))
    assert result.all_acknowledged
    assert [key for _, _, key in producer.delivered] == [b"a"] * 5


def test_only_size_errors_of_several_records_split() -> None:
    assert decisions.split_on_refusal(type(MessageSizeTooLargeError()).__name__, 2)
    assert not decisions.split_on_refusal("MessageSizeTooLargeError", 1)
    assert not decisions.split_on_refusal("KafkaTimeoutError", 10)
    assert decisions.halves([1, 2, 3]) == ([1, 2], [3])
    assert decisions.halves([1, 2]) == ([1], [2])


def test_after_a_refusal_the_topic_gets_batches_that_fit_without_splitting_again() -> None:
    refusals = 0
    batches: collections.Counter[str] = collections.Counter()
    over = refuse_over(250)

    def fail(topic: str, partition: int, batch: FakeBatch) -> Exception | None:
        nonlocal refusals
        batches[topic] += 1
        error = over(topic, partition, batch)
        refusals += error is not None
        return error

    producer = FakeProducer(partitions=1, fail=fail)
    publisher = kafka_publisher(producer)
    events = [make_event(n, key="a", value=b"x" * 100) for n in range(1, 8)]
    assert asyncio.run(publisher.publish(events)).all_acknowledged
    assert refusals > 0
    first_call = refusals
    assert asyncio.run(publisher.publish(events)).all_acknowledged
    assert refusals == first_call  # the second call built batches the topic takes
    assert len(producer.delivered) == 14
    # Other topics keep the full batch size.
    others = [make_event(n, key="a", topic="other", value=b"x" * 10) for n in range(1, 8)]
    assert asyncio.run(publisher.publish(others)).all_acknowledged
    assert batches["other"] == 1
    assert decisions.batch_cap_after_refusal(None, 1000) == 500
    assert decisions.batch_cap_after_refusal(300, 1000) == 300
