"""Value objects that travel through the relay.

Events read from the outbox, and the outcome of publishing them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum


class EventState(enum.StrEnum):
    """The ``state`` column of an outbox row."""

    PENDING = "pending"
    SENT = "sent"
    PARKED = "parked"
    SKIPPED = "skipped"


@dataclasses.dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One event, ready to become a Kafka record.

    `value` is the payload exactly as it goes on the wire: compact JSON for ``payload``,
    the raw bytes for ``payload_bytes``. `headers` already holds ``event_id`` and the
    optional ``event_type`` / ``aggregate_type`` next to the row's own headers (e.g.
    ``traceparent``).
    """

    #: The outbox row id (the order within the outbox); 0 for table-less WAL messages.
    id: int
    event_id: str
    topic: str
    key: str | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    created_at: dt.datetime | None = None
    #: Failed publish attempts so far (from the row's ``attempts`` column).
    attempts: int = 0
    #: WAL mode: the commit LSN of the transaction that wrote the event, else 0.
    lsn: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class PublishFailure:
    """Why Kafka did not take an event."""

    error: str
    #: False for errors that repeat whatever we do (record too large, topic invalid,
    #: not authorised): such events are parked after `park_after_attempts`.
    retriable: bool


@dataclasses.dataclass(frozen=True, slots=True)
class PublishResult:
    """The outcome of publishing one batch: one entry per event, in batch order.

    ``failures[i]`` is None when Kafka acknowledged ``events[i]``.
    """

    events: tuple[OutboxEvent, ...]
    failures: tuple[PublishFailure | None, ...]

    @property
    def all_acknowledged(self) -> bool:
        """True when every event of the batch was acknowledged."""
        return all(failure is None for failure in self.failures)


@dataclasses.dataclass(frozen=True, slots=True)
class FailedEvent:
    """An event Kafka rejected for good this time: its attempt is counted on the row."""

    event: OutboxEvent
    failure: PublishFailure
    #: Failed attempts including this one (what the row's ``attempts`` becomes).
    attempts: int
    #: True when `attempts` reached ``park_after_attempts``: the row becomes ``parked``.
    park: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Acknowledgement:
    """How one fetched batch was settled; the loop hands it to `Source.acknowledge`.

    Every event of the batch is in exactly one of the three tuples, each in batch order.
    """

    #: Kafka acknowledged these: mark them sent (or delete them, or confirm their LSN).
    sent: tuple[OutboxEvent, ...]
    #: Rejected for good this time (record too large, topic invalid, not authorised):
    #: record the attempt and the error, and park those with ``park=True``.
    failed: tuple[FailedEvent, ...] = ()
    #: Not acknowledged and not charged: a retriable broker error, or held back behind an
    #: earlier failure of the same key. They stay pending and must be fetched again.
    unsettled: tuple[OutboxEvent, ...] = ()

    @property
    def complete(self) -> bool:
        """True when every event of the batch was acknowledged."""
        return not self.failed and not self.unsettled

    def __len__(self) -> int:
        return len(self.sent) + len(self.failed) + len(self.unsettled)
