"""`KafkaPublisher`: the `relay.publisher.Publisher` protocol implemented with aiokafka."""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import for_code
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from relay import decisions, tracing
from relay.config import Settings
from relay.errors import BrokerCapabilityError, BrokerError, ConfigError, first_line
from relay.events import OutboxEvent, PublishFailure, PublishResult

log = structlog.get_logger("relay.kafka")

#: How long `start` waits for the cluster before giving up (the loop then retries).
START_TIMEOUT_S: Final = 30.0
#: How long `stop` waits for records still in flight before abandoning them (they were
#: never acknowledged, so their rows stay pending).
STOP_TIMEOUT_S: Final = 5.0
#: Metadata is refreshed this often, so new partitions and moved leaders are seen soon.
METADATA_MAX_AGE_MS: Final = 60_000
#: How long `probe` waits for the answer to its metadata request.
PROBE_TIMEOUT_S: Final = 10.0
#: How long a topic the broker was asked to create may still be called unknown before its
#: events are charged (Kafka's controller creates it asynchronously, usually well within
#: a second).
TOPIC_CREATION_GRACE_S: Final = 5.0


class _InitProducerIdReported(logging.Filter):
    """Drop aiokafka's own line for a refused InitProducerId.

    `idempotence_refused` says it once, with the fix, instead of a class name per retry.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Unexpected error during InitProducerId")


logging.getLogger("aiokafka.producer.sender").addFilter(_InitProducerIdReported())


def idempotence_refused(servers: str, exc: BaseException) -> str:
    """The one line for a broker that refused InitProducerId (no idempotent producer).

    aiokafka's ``start()`` bootstraps (metadata), then asks a broker for a producer id
    when idempotence is on (``Sender._maybe_wait_for_pid``); the broker's error code comes
    back raised as-is: tansu answers UnknownError, brokers without the API
    UnsupportedVersion, Kafka before 2.8 ClusterAuthorizationFailed without the
    IdempotentWrite permission.
    """
    name = type(exc).__name__
    why = (
        "the relay's user lacks the IdempotentWrite permission on the cluster"
        if "Authorization" in name
        else "it may not support the idempotent producer"
    )
    return (
        f"the broker at {servers} refused InitProducerId ({name}): {why}; grant it, or set "
        "--kafka-enable-idempotence false (RELAY_KAFKA_ENABLE_IDEMPOTENCE=false), which "
        "trades duplicates on producer retries (per-key order still holds)"
    )


def producer_options(settings: Settings) -> dict[str, Any]:
    """The `AIOKafkaProducer` keyword arguments for `settings`.

    Raises `ConfigError` for combinations Kafka refuses (idempotence without
    ``acks=all``) and for TLS files that cannot be read.
    """
    acks: str | int = "all" if settings.kafka_acks == "all" else int(settings.kafka_acks)
    if settings.kafka_enable_idempotence and acks != "all":
        raise ConfigError(
            "invalid kafka_acks: the idempotent producer needs 'all' "
            "(or set kafka_enable_idempotence=false)"
        )
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.kafka_client_id,
        "acks": acks,
        "enable_idempotence": settings.kafka_enable_idempotence,
        "compression_type": (
            None if settings.kafka_compression == "none" else settings.kafka_compression
        ),
        "linger_ms": settings.kafka_linger_ms,
        # As in Kafka's Java producer, the request size caps a batch: a larger batch would
        # be refused by a broker sized for the request (MESSAGE_TOO_LARGE parks its events).
        "max_batch_size": min(settings.kafka_max_batch_bytes, settings.kafka_max_request_size),
        "max_request_size": settings.kafka_max_request_size,
        "request_timeout_ms": settings.kafka_request_timeout_ms,
        "metadata_max_age_ms": METADATA_MAX_AGE_MS,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = settings.kafka_sasl_username or None
        options["sasl_plain_password"] = settings.kafka_sasl_password or None
    if settings.kafka_security_protocol in {"SSL", "SASL_SSL"}:
        options["ssl_context"] = _ssl_context(settings)
    return options


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=settings.kafka_ssl_cafile or None,
            certfile=settings.kafka_ssl_certfile or None,
            keyfile=settings.kafka_ssl_keyfile or None,
            password=settings.kafka_ssl_password or None,
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"invalid Kafka TLS settings: {first_line(exc)}") from None
    return context


def record_too_large(event: OutboxEvent, max_request_size: int) -> PublishFailure | None:
    """A permanent failure when `event` cannot fit in a produce request, else None."""
    key = event.key.encode() if event.key is not None else None
    return _too_large(
        DefaultRecordBatchBuilder.estimate_size_in_bytes(key, event.value, list(event.headers)),
        max_request_size,
    )


def _too_large(size: int, max_request_size: int) -> PublishFailure | None:
    if size > max_request_size:
        return PublishFailure(
            f"RecordTooLarge: record of {size} bytes is larger than "
            f"kafka_max_request_size ({max_request_size})",
            retriable=False,
        )
    return None


class _Chain:
    """The record batches of one topic partition, sent one after the other."""

    __slots__ = ("builders", "cap", "filled", "partition", "topic")

    def __init__(self, topic: str, partition: int, cap: int | None) -> None:
        self.topic = topic
        self.partition = partition
        #: (builder, indexes of the events in it)
        self.builders: list[tuple[Any, list[int]]] = []
        #: Estimated bytes a record batch of this topic may hold, when the broker refused
        #: larger ones (None: up to ``kafka_max_batch_bytes``, the builder's own limit).
        self.cap = cap
        #: Estimated bytes in the last builder (tracked only under a cap).
        self.filled = 0


class KafkaPublisher:
    """`Publisher` with aiokafka, building record batches directly.

    ``send()`` per record costs a coroutine, a future and a partitioner call per event;
    building `BatchBuilder`s ourselves and handing each to ``send_batch`` is several
    times cheaper. The partition is therefore chosen here, with Kafka's default
    partitioner (murmur2 of the key), so every producer agrees on where a key goes. Null
    keys stick to one partition per call and rotate between calls.

    The record batches of one partition are sent one after the other: the next is handed
    to aiokafka only once the previous was acknowledged, so a batch that fails for good
    can never be overtaken by a later one of the same partition (aiokafka alone would
    send it once the failed one expired). Different partitions go in parallel.

    After a failure that looks like a lost connection, the aiokafka producer is closed
    and a fresh one started on the next call: a client that lived through a long outage
    sometimes keeps stale connections or metadata. Metadata errors never do that.

    A topic the producer does not know yet is first looked up with a metadata request of
    our own, one for all such topics of a call, asking the broker to create missing ones
    only when ``kafka_auto_create_topics`` is on. A topic it calls unknown, invalid or
    not authorised is remembered as refused for ``kafka_topic_error_ttl`` seconds: its
    events fail at once (charged, parked in the end), and never reach aiokafka, which
    would wait ``kafka_request_timeout_ms`` for the topic while every other topic waits
    behind it.

    A record batch the broker refuses as too large (the topic's ``max.message.bytes`` is
    below ``kafka_max_batch_bytes``) is split in halves and sent again; only a record
    refused alone is charged.
    """

    def __init__(
        self, settings: Settings, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._options = producer_options(settings)
        self._producer: Any = None
        self._fresh_producer_needed = False
        self._null_key_turn = itertools.count()
        #: One connection attempt at a time (`start` may run while a publish reconnects).
        self._connecting = asyncio.Lock()
        self._monotonic = monotonic
        self._refused = decisions.RefusedTopics(
            settings.kafka_topic_error_ttl, TOPIC_CREATION_GRACE_S
        )
        #: Per topic, the estimated bytes of the record batches it takes, learnt from
        #: refusals of larger ones (half the refused size): later calls build batches
        #: that fit instead of splitting again every time.
        self._batch_caps: dict[str, int] = {}
        #: Producers replaced by a fresh one after a failure (not the first start).
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        """True while a started producer exists and no failure asked for a new one."""
        return self._producer is not None and not self._fresh_producer_needed

    async def start(self) -> None:
        """Connect to the cluster (no-op when connected); `BrokerError` when it cannot."""
        async with self._connecting:
            if not self.connected:
                await self._reconnect()

    async def _reconnect(self) -> None:
        await self._close()
        producer = AIOKafkaProducer(**self._options)
        try:
            await asyncio.wait_for(producer.start(), START_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - aiokafka raises many kinds; all mean "cannot"
            # A broker answered the bootstrap metadata request: what failed after it is
            # the producer id request, the only step left in start().
            bootstrapped = bool(producer.client.cluster.brokers())
            await _quietly_stop(producer, STOP_TIMEOUT_S)
            if (
                self._settings.kafka_enable_idempotence
                and bootstrapped
                and not isinstance(exc, TimeoutError)
            ):
                raise BrokerCapabilityError(
                    idempotence_refused(self._settings.bootstrap_servers, exc)
                ) from None
            raise BrokerError(
                f"cannot connect to Kafka at {self._settings.bootstrap_servers}: {first_line(exc)}"
            ) from None
        self._producer = producer
        self._fresh_producer_needed = False

    async def probe(self) -> None:
        """Connect when not connected, then ask a broker for metadata of no topic.

        The cheapest request there is: it proves a broker answers while nothing is
        published. Raises `BrokerError` when none does within `PROBE_TIMEOUT_S`.
        """
        await self.start()
        client = self._producer.client
        try:
            node_id = client.get_random_node()
            if node_id is None:
                raise BrokerError("no broker known")  # noqa: TRY301 - reported like the rest
            await asyncio.wait_for(client.send(node_id, MetadataRequest([])), PROBE_TIMEOUT_S)
        except TimeoutError:
            raise BrokerError(
                f"no broker at {self._settings.bootstrap_servers} answered a metadata "
                f"request within {PROBE_TIMEOUT_S:g}s"
            ) from None
        except Exception as exc:  # noqa: BLE001 - aiokafka raises many kinds; all mean "cannot"
            raise BrokerError(
                f"no broker at {self._settings.bootstrap_servers} answered a metadata "
                f"request: {first_line(exc)}"
            ) from None

    async def stop(self) -> None:
        """Flush what is in flight (for at most `STOP_TIMEOUT_S`) and disconnect."""
        async with self._connecting:
            await self._close()

    async def _close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await _quietly_stop(producer, STOP_TIMEOUT_S)

    async def _ensure_producer(self) -> None:
        if self.connected:
            return
        async with self._connecting:
            if self.connected:
                return
            reconnecting = self._producer is not None
            await self._reconnect()
        if reconnecting:
            self.reconnects += 1
            log.info("kafka producer reconnected", servers=self._settings.bootstrap_servers)

    async def publish(self, events: Sequence[OutboxEvent]) -> PublishResult:
        """Publish `events`; see `Publisher.publish`."""
        failures: list[PublishFailure | None] = [None] * len(events)
        if not events:
            return PublishResult((), ())
        try:
            await self._ensure_producer()
        except BrokerError as exc:
            self._fresh_producer_needed = True
            return PublishResult(
                tuple(events),
                (PublishFailure(f"KafkaUnavailable: {exc}", retriable=True),) * len(events),
            )
        with tracing.publish_span(events):
            chains = await self._build(events, failures)
            await asyncio.gather(*(self._send_chain(chain, events, failures) for chain in chains))
        return PublishResult(tuple(events), tuple(failures))

    async def _partition_counts(
        self, events: Sequence[OutboxEvent]
    ) -> dict[str, int | PublishFailure]:
        """Per topic of `events`, its partition count or the failure of its events.

        A topic the producer knows costs a dict lookup; the others are looked up together.
        """
        counts: dict[str, int | PublishFailure] = {}
        cluster = self._producer.client.cluster
        now = self._monotonic()
        unknown: list[str] = []
        for topic in dict.fromkeys(event.topic for event in events):
            partitions = cluster.partitions_for_topic(topic)
            if partitions:
                counts[topic] = len(partitions)
            elif not decisions.valid_topic(topic):
                counts[topic] = PublishFailure(
                    f"InvalidTopic: invalid topic name {topic!r}", retriable=False
                )
            elif (refusal := self._refused.refusal(topic, now)) is not None:
                counts[topic] = refusal
            else:
                unknown.append(topic)
        if unknown:
            counts.update(await self._look_up(unknown))
        return counts

    async def _look_up(self, topics: list[str]) -> dict[str, int | PublishFailure]:
        """Partition counts of topics the producer does not know, or their failures.

        One metadata request for all of them (asking for creation only when
        ``kafka_auto_create_topics`` is on) says which exist; the producer then learns
        those that do, concurrently. Failures here never replace the producer.
        """
        auto_create = self._settings.kafka_auto_create_topics
        client = self._producer.client
        try:
            node_id = client.get_random_node()
            if node_id is None:
                raise BrokerError("no broker known")  # noqa: TRY301 - reported like the rest
            response = await client.send(
                node_id, MetadataRequest(topics, allow_auto_topic_creation=auto_create)
            )
        except Exception as exc:  # noqa: BLE001 - any error is reported per event
            failure = PublishFailure(
                f"KafkaUnavailable: no answer to a metadata request for {len(topics)} "
                f"topic(s): {first_line(exc)}",
                retriable=True,
            )
            return dict.fromkeys(topics, failure)
        results: dict[str, int | PublishFailure] = {}
        now = self._monotonic()
        for answer in response.topics:
            error_code, topic = answer[0], answer[1]
            if topic not in topics:
                continue
            verdict = self._refused.answered(
                topic,
                error_code,
                for_code(error_code).__name__,
                auto_create=auto_create,
                now=now,
            )
            if verdict is None:
                continue
            results[topic] = verdict
            if not verdict.retriable:
                log.warning(
                    "kafka refused a topic",
                    topic=topic,
                    error=verdict.error,
                    refused_for_s=self._refused.ttl_s,
                )
        existing = [topic for topic in topics if topic not in results]
        counts = await asyncio.gather(
            *(self._producer.partitions_for(topic) for topic in existing), return_exceptions=True
        )
        for topic, partitions in zip(existing, counts, strict=True):
            if isinstance(partitions, BaseException):
                name = type(partitions).__name__
                results[topic] = PublishFailure(
                    f"{name}: no metadata for topic {topic!r}: {first_line(partitions)}",
                    retriable=decisions.error_kind(name) is decisions.ErrorKind.RETRIABLE,
                )
            else:
                results[topic] = len(partitions)
        return results

    async def _build(
        self, events: Sequence[OutboxEvent], failures: list[PublishFailure | None]
    ) -> list[_Chain]:
        counts = await self._partition_counts(events)
        max_request_size = self._settings.kafka_max_request_size
        estimate = DefaultRecordBatchBuilder.estimate_size_in_bytes
        partition_for = decisions.partition_for
        hold = decisions.KeyHold()
        caps = self._batch_caps
        chains: dict[tuple[str, int], _Chain] = {}
        null_turn = next(self._null_key_turn)
        # One pass, one key encoding and one headers list per event: this loop runs for
        # every relayed event.
        for index, event in enumerate(events):
            count = counts[event.topic]
            key = event.key.encode() if event.key is not None else None
            headers = list(event.headers)
            failure: PublishFailure | None
            if hold.holds(event):
                failure = decisions.held_back(event.key or "")
            elif isinstance(count, PublishFailure):
                failure = count
            else:
                size = estimate(key, event.value, headers)
                failure = _too_large(size, max_request_size)
            if failure is not None:
                failures[index] = failure
                hold.block(event)
                continue
            assert isinstance(count, int)  # noqa: S101 - narrowed by the branch above
            partition = partition_for(key, count) if key is not None else null_turn % count
            chain = chains.get((event.topic, partition))
            if chain is None:
                chain = chains[event.topic, partition] = _Chain(
                    event.topic, partition, caps.get(event.topic)
                )
            builders = chain.builders
            if builders:
                builder, indexes = builders[-1]
                cap = chain.cap
                if cap is None:
                    if builder.append(timestamp=None, key=key, value=event.value, headers=headers):
                        indexes.append(index)
                        continue
                elif chain.filled + size <= cap and builder.append(
                    timestamp=None, key=key, value=event.value, headers=headers
                ):
                    indexes.append(index)
                    chain.filled += size
                    continue
            builder = self._producer.create_batch()
            # A fresh builder takes any first record; sizes were checked against the limit.
            builder.append(timestamp=None, key=key, value=event.value, headers=headers)
            builders.append((builder, [index]))
            chain.filled = size
        return list(chains.values())

    async def _send_chain(
        self, chain: _Chain, events: Sequence[OutboxEvent], failures: list[PublishFailure | None]
    ) -> None:
        queue = collections.deque(chain.builders)
        while queue:
            builder, indexes = queue.popleft()
            builder.close()
            error: PublishFailure | None = None
            try:
                future = await self._producer.send_batch(
                    builder, chain.topic, partition=chain.partition
                )
                await future
            except Exception as exc:  # noqa: BLE001 - any error is reported per event
                if decisions.split_on_refusal(type(exc).__name__, len(indexes)):
                    # Too large for the topic: send the halves instead, first one first,
                    # before anyone is charged; build smaller batches from now on.
                    cap = self._learn_cap(chain.topic, events, indexes)
                    log.info(
                        "kafka refused a record batch as too large; sending it in halves",
                        topic=chain.topic,
                        partition=chain.partition,
                        events=len(indexes),
                        batch_bytes_from_now=cap,
                        error=f"{type(exc).__name__}: {first_line(exc)}",
                    )
                    first, second = decisions.halves(indexes)
                    queue.extendleft(
                        (self._batch_of(events, second), self._batch_of(events, first))
                    )
                    continue
                batch = self._failure(exc, len(indexes))
                for index, failure in zip(indexes, batch, strict=True):
                    failures[index] = failure
                error = batch[0]
            if error is None:
                continue
            log.warning(
                "kafka rejected a record batch",
                topic=chain.topic,
                partition=chain.partition,
                events=len(indexes),
                first_event_id=events[indexes[0]].event_id,
                error=error.error,
                retriable=error.retriable,
            )
            # Later batches of this partition wait for the next call, behind the failure.
            for _, later in queue:
                for index in later:
                    failures[index] = decisions.held_back(events[index].key or "")
            return

    def _learn_cap(self, topic: str, events: Sequence[OutboxEvent], indexes: list[int]) -> int:
        """Lower `topic`'s batch cap below the refused batch of `indexes`; the new cap."""
        estimate = DefaultRecordBatchBuilder.estimate_size_in_bytes
        refused = 0
        for index in indexes:
            event = events[index]
            key = event.key.encode() if event.key is not None else None
            refused += estimate(key, event.value, list(event.headers))
        cap = decisions.batch_cap_after_refusal(self._batch_caps.get(topic), refused)
        self._batch_caps[topic] = cap
        return cap

    def _batch_of(self, events: Sequence[OutboxEvent], indexes: list[int]) -> tuple[Any, list[int]]:
        """A new record batch of the events at `indexes` (part of a batch that held them all)."""
        builder = self._producer.create_batch()
        for index in indexes:
            event = events[index]
            key = event.key.encode() if event.key is not None else None
            builder.append(timestamp=None, key=key, value=event.value, headers=list(event.headers))
        return builder, indexes

    def _failure(self, exc: BaseException, count: int = 1) -> list[PublishFailure]:
        name = type(exc).__name__
        kind = decisions.error_kind(name)
        if kind is decisions.ErrorKind.RETRIABLE:
            # Whatever went wrong (connection, timeout, a dead sender task), a fresh
            # client on the next call costs little and clears stale state.
            self._fresh_producer_needed = True
        return decisions.batch_failures(count, f"{name}: {first_line(exc)}", kind)


async def _quietly_stop(producer: AIOKafkaProducer, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(producer.stop(), timeout_s)
    except Exception as exc:  # noqa: BLE001 - a producer being discarded may fail to close
        log.debug("kafka producer did not close cleanly", error=first_line(exc))
