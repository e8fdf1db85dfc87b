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
