from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import (
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
)

from relay import decisions, kafka
from relay.config import Settings
from relay.errors import ConfigError
from relay.events import OutboxEvent
from relay.kafka import KafkaPublisher, producer_options, record_too_large
from relay.testing import make_event

SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def test_production_defaults() -> None:
    options = producer_options(Settings())
    assert options["acks"] == "all"
    assert options["enable_idempotence"] is True
    assert options["compression_type"] is None
    assert options["linger_ms"] == 5
    assert options["max_batch_size"] == 1_048_576
    assert options["max_request_size"] == 1_048_576
    assert options["request_timeout_ms"] == 30_000
    assert options["security_protocol"] == "PLAINTEXT"
    assert "ssl_context" not in options
    assert "sasl_mechanism" not in options


def test_every_kafka_setting_reaches_the_producer() -> None:
    settings = Settings(
        bootstrap_servers="k1:9092,k2:9092",
        kafka_client_id="billing-relay",
        kafka_acks="1",
        kafka_enable_idempotence=False,
        kafka_compression="gzip",
        kafka_linger_ms=20,
        kafka_max_batch_bytes=65536,
        kafka_max_request_size=2_000_000,
        kafka_request_timeout_ms=5000,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="relay",
        kafka_sasl_password="s3cret",  # noqa: S106 - a test value
    )
    options = producer_options(settings)
    assert options == options | {
        "bootstrap_servers": "k1:9092,k2:9092",
        "client_id": "billing-relay",
        "acks": 1,
        "enable_idempotence": False,
        "compression_type": "gzip",
        "linger_ms": 20,
        "max_batch_size": 65536,
        "max_request_size": 2_000_000,
        "request_timeout_ms": 5000,
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "relay",
        "sasl_plain_password": "s3cret",
    }


def test_idempotence_needs_acks_all() -> None:
    with pytest.raises(ConfigError, match="idempotent producer needs 'all'"):
        producer_options(Settings(kafka_acks="1"))


@pytest.mark.skipif(not SYSTEM_CA.exists(), reason="no system CA bundle")
def test_tls_builds_a_verifying_context() -> None:
    options = producer_options(
        Settings(kafka_security_protocol="SASL_SSL", kafka_ssl_cafile=str(SYSTEM_CA))
    )
    context = options["ssl_context"]
    assert context.check_hostname
    assert options["sasl_mechanism"] == "PLAIN"


def test_unreadable_tls_files_are_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid Kafka TLS settings"):
        producer_options(
            Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=str(tmp_path / "missing.pem"))
        )


def event(size: int) -> OutboxEvent:
    return OutboxEvent(1, "e", "t", "key", b"x" * size, (("event_id", b"e"),))


def test_records_over_the_request_size_are_permanent_failures() -> None:
    assert record_too_large(event(900), 1000) is None
    failure = record_too_large(event(5000), 1000)
    assert failure is not None
    assert not failure.retriable
    assert "larger than kafka_max_request_size (1000)" in failure.error


# -- KafkaPublisher against a fake aiokafka producer -------------------------------------


class FakeBatch:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records: list[tuple[bytes | None, bytes | None]] = []
        self.closed = False

    def append(
        self,
        *,
        timestamp: int | None,  # noqa: ARG002 - aiokafka's signature
        key: bytes | None,
        value: bytes | None,
        headers: list[Any],  # noqa: ARG002
    ) -> object | None:
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True


class FakeMetadataResponse:
    def __init__(self, topics: list[tuple[int, str]]) -> None:
        self.topics = topics


class FakeClient:
    """aiokafka's client as the publisher uses it: cluster metadata, metadata requests.

    Topics in `missing` do not exist (error 3); the others exist once asked for.
    """

    def __init__(self, producer: FakeProducer) -> None:
        self.producer = producer
        self.cluster = self
        self.metadata_requests: list[list[str]] = []

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        if topic not in self.producer.known:
            return None
        return set(range(self.producer.partitions))

    def get_random_node(self) -> int:
        return 0

    async def send(self, _node_id: int, request: Any) -> FakeMetadataResponse:
        topics: list[str] = request._topics
        self.metadata_requests.append(topics)
        return FakeMetadataResponse(
            [(3 if topic in self.producer.missing else 0, topic) for topic in topics]
        )


class FakeProducer:
    """Takes record batches like aiokafka; `fail` decides a batch's fate."""

    def __init__(
        self,
        partitions: int = 3,
        capacity: int = 100,
        fail: Callable[[str, int, FakeBatch], Exception | None] | None = None,
        missing: frozenset[str] = frozenset(),
    ) -> None:
        self.partitions = partitions
        self.capacity = capacity
        self.fail = fail or (lambda _topic, _partition, _batch: None)
        self.delivered: list[tuple[str, int, bytes | None]] = []
        self.missing = missing
        self.known: set[str] = set()
        self.client = FakeClient(self)

    async def partitions_for(self, topic: str) -> set[int]:
        assert topic not in self.missing, "the producer waits 30 s for a missing topic"
        self.known.add(topic)
        return set(range(self.partitions))

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity)

    async def send_batch(
        self, batch: FakeBatch, topic: str, *, partition: int
    ) -> asyncio.Future[None]:
        assert batch.closed
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        error = self.fail(topic, partition, batch)
        if error is None:
            self.delivered.extend((topic, partition, key) for key, _ in batch.records)
            future.set_result(None)
        else:
            future.set_exception(error)
        return future

    async def stop(self) -> None:
        pass


def kafka_publisher(producer: FakeProducer, **settings: Any) -> KafkaPublisher:
    publisher = KafkaPublisher(Settings(kafka_enable_idempotence=False, **settings))
    publisher._producer = producer
    return publisher


async def test_keys_go_to_their_murmur2_partition_and_null_keys_stick_per_call() -> None:
    producer = FakeProducer(partitions=5)
    events = [make_event(n, key=f"key-{n % 7}") for n in range(1, 30)] + [
        make_event(100, key=None),
        make_event(101, key=None),
    ]
    result = await kafka_publisher(producer).publish(events)
    assert result.all_acknowledged
    for topic, partition, key in producer.delivered:
        assert topic == "t"
        if key is not None:
            assert partition == decisions.partition_for(key, 5)
    null_partitions = {p for _, p, key in producer.delivered if key is None}
    assert len(null_partitions) == 1


async def test_a_record_too_large_is_poison_and_holds_back_its_key_only() -> None:
    producer = FakeProducer()
    big = make_event(2, key="a", value=b"x" * 5000)
    events = [make_event(1, key="a"), big, make_event(3, key="a"), make_event(4, key="b")]
    result = await kafka_publisher(producer, kafka_max_request_size=1000).publish(events)
    failures = result.failures
    assert failures[0] is None
    assert failures[1] is not None
    assert not failures[1].retriable
    assert failures[2] is not None
    assert failures[2].retriable
    assert "held back" in failures[2].error
    assert failures[3] is None
    assert [key for _, _, key in producer.delivered] == [b"a", b"b"]


async def test_a_failed_batch_holds_back_the_later_batches_of_its_partition() -> None:
    key = "same"
    calls = 0

    def fail_first(_topic: str, _partition: int, _batch: FakeBatch) -> Exception | None:
        nonlocal calls
        calls += 1
        return KafkaTimeoutError() if calls == 1 else None

    producer = FakeProducer(capacity=2, fail=fail_first)
    publisher = kafka_publisher(producer)
    events = [make_event(n, key=key) for n in range(1, 6)]  # three record batches
    result = await publisher.publish(events)
    assert all(failure is not None and failure.retriable for failure in result.failures)
    errors = [failure.error for failure in result.failures if failure is not None]
    assert "KafkaTimeoutError" in errors[0]
    assert "held back" in errors[2]
    assert producer.delivered == []  # the later batches were never handed over
    assert calls == 1
    assert not publisher.connected  # a fresh client on the next call


async def test_a_record_level_broker_error_charges_only_the_first_record() -> None:
    producer = FakeProducer(fail=lambda *_: MessageSizeTooLargeError())
    result = await kafka_publisher(producer).publish([make_event(1, "a"), make_event(2, "a")])
    assert [f.retriable if f else None for f in result.failures] == [False, True]


async def test_topic_errors_charge_every_event_and_invalid_names_never_reach_kafka() -> None:
    producer = FakeProducer(fail=lambda *_: TopicAuthorizationFailedError())
    denied = await kafka_publisher(producer).publish([make_event(1, "a"), make_event(2, "b")])
    assert [f.retriable if f else None for f in denied.failures] == [False, False]

    invalid = await kafka_publisher(FakeProducer()).publish([make_event(3, "a", topic="no spaces")])
    assert invalid.failures[0] is not None
    assert invalid.failures[0].error == "InvalidTopic: invalid topic name 'no spaces'"


# -- topics the broker does not know (issue 10, finding 4) --------------------------------


async def test_a_missing_topic_fails_at_once_and_alone_and_is_remembered_for_a_while() -> None:
    producer = FakeProducer(missing=frozenset({"gone"}))
    clock = [100.0]
    publisher = KafkaPublisher(
        Settings(kafka_enable_idempotence=False, kafka_auto_create_topics=False),
        monotonic=lambda: clock[0],
    )
    publisher._producer = producer
    events = [
        make_event(1, "a", topic="gone"),
        make_event(2, "b", topic="orders"),
        make_event(3, "a", topic="orders"),
        make_event(4, "c", topic="payments"),
    ]
    result = await publisher.publish(events)
    gone, b, held, c = result.failures
    assert gone is not None
    assert not gone.retriable
    assert gone.error == (
        "UnknownTopicOrPartitionError: topic 'gone' does not exist and "
        "kafka_auto_create_topics is off"
    )
    assert b is None
    assert c is None
    assert held is not None
    assert held.retriable
    assert "held back" in held.error
    # One metadata request for every topic the producer did not know, not one per topic.
    assert producer.client.metadata_requests == [["gone", "orders", "payments"]]
    assert publisher.connected  # a metadata error never replaces the producer

    # Remembered: no second request within the TTL, known topics cost no request at all.
    clock[0] += 9.9
    again = await publisher.publish(events)
    assert again.failures[0] == gone
    assert producer.client.metadata_requests == [["gone", "orders", "payments"]]

    # Asked again once the TTL is over: a topic created meanwhile is used.
    clock[0] += 0.1
    producer.missing = frozenset()
    created = await publisher.publish(events[:1])
    assert created.all_acknowledged
    assert producer.client.metadata_requests[-1] == ["gone"]


async def test_a_topic_being_auto_created_is_not_charged_while_the_broker_creates_it() -> None:
    """Kafka (KRaft) answers UNKNOWN_TOPIC_OR_PARTITION while its controller creates it."""
    producer = FakeProducer(missing=frozenset({"new"}))
    clock = [0.0]
    publisher = KafkaPublisher(Settings(kafka_enable_idempotence=False), monotonic=lambda: clock[0])
    publisher._producer = producer
    events = [make_event(1, "a", topic="new"), make_event(2, "b", topic="orders")]
    first = await publisher.publish(events)
    creating = first.failures[0]
    assert creating is not None
    assert creating.retriable  # not charged
    assert "does not exist yet" in creating.error
    assert first.failures[1] is None
    clock[0] += 1.0
    producer.missing = frozenset()  # the controller created it
    assert (await publisher.publish(events[:1])).all_acknowledged


async def test_with_auto_creation_on_a_topic_still_unknown_after_the_grace_is_refused() -> None:
    producer = FakeProducer(missing=frozenset({"gone"}))
    clock = [0.0]
    publisher = KafkaPublisher(Settings(kafka_enable_idempotence=False), monotonic=lambda: clock[0])
    publisher._producer = producer
    event = make_event(1, "a", topic="gone")
    assert (await publisher.publish([event])).failures[0].retriable  # type: ignore[union-attr]
    clock[0] += kafka.TOPIC_CREATION_GRACE_S
    failure = (await publisher.publish([event])).failures[0]
    assert failure is not None
    assert not failure.retriable
    assert "auto.create.topics.enable=false" in failure.error


# -- record batches too large for the topic (issue 10, finding 5) -------------------------


def refuse_over(max_bytes: int) -> Callable[[str, int, FakeBatch], Exception | None]:
    """A broker whose topics take record batches of at most `max_bytes` of values."""

    def fail(_topic: str, _partition: int, batch: FakeBatch) -> Exception | None:
        size = sum(len(value or b"") for _, value in batch.records)
        return MessageSizeTooLargeError() if size > max_bytes else None

    return fail


async def test_a_batch_too_large_for_the_topic_is_split_before_anyone_is_charged() -> None:
    producer = FakeProducer(partitions=1, fail=refuse_over(250))
    events = [make_event(n, key="a", value=b"x" * 100) for n in range(1, 8)]
    result = await kafka_publisher(producer).publish(events)
    assert result.all_acknowledged
    assert len(producer.delivered) == 7


async def test_only_a_record_too_large_on_its_own_is_charged() -> None:
    producer = FakeProducer(partitions=1, fail=refuse_over(250))
    sizes = [100, 100, 100, 300, 100, 100]
    events = [make_event(n, key=f"k{n}", value=b"x" * size) for n, size in enumerate(sizes, 1)]
    result = await kafka_publisher(producer).publish(events)
    kinds = [None if f is None else f.retriable for f in result.failures]
    # Sent before it, charged itself, the later ones of its partition wait for the next call.
    assert kinds == [None, None, None, False, True, True]
    assert len(producer.delivered) == 3
