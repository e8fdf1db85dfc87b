"""Kafka's numeric settings: ranges Kafka's own types allow, sizes a record can fit."""

from __future__ import annotations

import dataclasses

import pytest
from aiokafka import AIOKafkaProducer

from relay import config
from relay.config import Settings, load_settings
from relay.errors import ConfigError
from relay.kafka import producer_options, record_too_large
from relay.testing import make_event


def test_the_smallest_request_size_holds_exactly_the_smallest_record() -> None:
    """The minimum is derived from Kafka's record format, as aiokafka measures it."""
    smallest = dataclasses.replace(make_event(1, key=None), value=None)  # a keyless tombstone
    assert record_too_large(smallest, config.MIN_KAFKA_REQUEST_SIZE) is None
    assert record_too_large(smallest, config.MIN_KAFKA_REQUEST_SIZE - 1) is not None
    size = str(config.MIN_KAFKA_REQUEST_SIZE)
    assert load_settings({"kafka_max_request_size": size}, {}).kafka_max_request_size == int(size)
    with pytest.raises(ConfigError, match=f"must be at least {size} \\(the size of the smallest"):
        load_settings({"kafka_max_request_size": str(int(size) - 1)}, {})


@pytest.mark.parametrize(
    ("name", "largest"),
    [
        ("kafka_max_request_size", 2**31 - 1),
        ("kafka_max_batch_bytes", 2**31 - 1),
        ("kafka_request_timeout_ms", 2**31 - 1),
        ("kafka_linger_ms", 2**63 - 1),
    ],
)
def test_kafka_numbers_stay_in_the_range_of_kafkas_own_types(name: str, largest: int) -> None:
    """A request timeout past int32 failed every produce request ("'i' format requires")."""
    assert getattr(load_settings({name: str(largest)}, {}), name) == largest
    with pytest.raises(ConfigError, match=f"must be at most {largest}"):
        load_settings({name: str(largest + 1)}, {})


async def test_the_request_size_caps_the_record_batch() -> None:
    """A request size lowered for the broker (Event Hubs: 1,000,000) also bounds batches.

    Before, batches grew to --kafka-max-batch-bytes (1 MiB), past the size the broker
    was said to accept: MESSAGE_TOO_LARGE, and every event of the batch charged.
    """
    settings = Settings(kafka_enable_idempotence=False, kafka_max_request_size=4096)
    producer = AIOKafkaProducer(**producer_options(settings))
    builder = producer.create_batch()
    appended = 0
    while builder.append(timestamp=None, key=b"k", value=b"x" * 100, headers=[]) is not None:
        appended += 1
        assert appended < 1000, "the batch never filled"
    await producer.stop()
    assert builder.size() <= settings.kafka_max_request_size
