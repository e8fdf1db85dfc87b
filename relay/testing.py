"""Fakes for fast tests: an in-memory outbox source and a recording publisher.

They follow the same contracts as the real ones (`relay.source.Source`,
`relay.publisher.Publisher`), so the relay loop can be tested without PostgreSQL or
Kafka. Integration tests always use the real servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping, Sequence

from relay import decisions
from relay.errors import DatabaseError
from relay.events import (
    Acknowledgement,
    EventState,
    OutboxEvent,
    PublishFailure,
    PublishResult,
)
from relay.source import Backlog, ConnectionProblem


def make_event(
    id_: int, key: str | None = "k", topic: str = "t", value: bytes = b"{}", attempts: int = 0
) -> OutboxEvent:
    """An event as the poll source would build it from a row."""
    event_id = f"00000000-0000-0000-0000-{id_:012d}"
    return OutboxEvent(
        id=id_,
        event_id=event_id,
        topic=topic,
        key=key,
        value=value,
        headers=decisions.kafka_headers(event_id, None, None, None),
        created_at=dt.datetime.now(dt.UTC),
        attempts=attempts,
    )


@dataclasses.dataclass(slots=True)
class _Row:
    event: OutboxEvent
    state: EventState = EventState.PENDING
    attempts: int = 0
    last_error: str | None = None


class InMemorySource:
    """A `Source` over a list of rows, with the poll source's semantics.

    Forward fetches by id; a new scan from the oldest due row after a rewind or when
    caught up; parked keys block later events of the key (``park=True``). Set
    `fail_next` to make the next call raise `DatabaseError`, `hang` to make fetches wait
    until it is cleared (a wedged connection), `problems` for `connection_problems`.
    """

    def __init__(self, events: Sequence[OutboxEvent] = (), *, park: bool = True) -> None:
        self.rows: dict[int, _Row] = {event.id: _Row(event) for event in events}
        self.park = park
        self.acknowledgements: list[Acknowledgement] = []
        self.fail_next: str | None = None
        self.problems: dict[str, ConnectionProblem] = {}
        #: Set: fetch proceeds. Cleared: every fetch waits (as on a dead socket).
        self.unhung = asyncio.Event()
        self.unhung.set()
        self._cursor = 0
        #: Fetched and not yet acknowledged: never fetched twice (until a rewind).
        self._in_flight: set[int] = set()
        self._new = asyncio.Event()

    def add(self, *events: OutboxEvent) -> None:
        """Commit new events (and notify)."""
        for event in events:
            self.rows[event.id] = _Row(event)
        self._new.set()

    def release(self, id_: int) -> None:
        """An operator releases a parked row, as ``outbox-relay retry`` does.

        Pending again with its attempts reset: a row that fails again gets every attempt
        again before it parks. A row that is not parked is left as it is.
        """
        row = self.rows[id_]
        if row.state is EventState.PARKED:
            row.state, row.attempts, row.last_error = EventState.PENDING, 0, None
        self._cursor = 0

    def state(self, id_: int) -> EventState:
        """The state of the row `id_`."""
        return self.rows[id_].state

    def _check_failure(self) -> None:
        if self.fail_next is not None:
            message, self.fail_next = self.fail_next, None
            raise DatabaseError(message)

    async def start(self) -> None:
        """Nothing to connect."""

    async def stop(self) -> None:
        """Nothing to close."""

    def _due(self, row: _Row, parked_keys: set[str]) -> bool:
        event = row.event
        if row.state is not EventState.PENDING:
            return False
        if not self.park or event.key is None:
            return True
        return event.key not in parked_keys  # whatever the topic, as poll.sql's fetch_park

    async def fetch(self, max_events: int) -> Sequence[OutboxEvent]:
        """The next due events after the cursor, in id order."""
        await asyncio.sleep(0)
        await self.unhung.wait()
        self._check_failure()
        batch: list[OutboxEvent] = []
        parked: set[str] = set()
        for id_ in sorted(self.rows):
            row = self.rows[id_]
            event = row.event
            if row.state is EventState.PARKED and event.key is not None:
                parked.add(event.key)
            if id_ <= self._cursor or id_ in self._in_flight or not self._due(row, parked):
                continue
            batch.append(dataclasses.replace(event, attempts=row.attempts))
            if len(batch) == max_events:
                break
        self._cursor = batch[-1].id if len(batch) == max_events else 0
        self._in_flight.update(event.id for event in batch)
        return batch

    async def wait(self, timeout_s: float) -> None:
        """Return when events were added, or after `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._new.wait(), timeout_s)
        self._new.clear()

    async def acknowledge(self, acknowledgement: Acknowledgement) -> None:
        """Mark sent, count attempts, park."""
        await asyncio.sleep(0)
        self._check_failure()
        self.acknowledgements.append(acknowledgement)
        for event in (*acknowledgement.sent, *acknowledgement.unsettled):
            self._in_flight.discard(event.id)
        for failed in acknowledgement.failed:
            self._in_flight.discard(failed.event.id)
        for event in acknowledgement.sent:
            self.rows[event.id].state = EventState.SENT
        for failed in acknowledgement.failed:
            row = self.rows[failed.event.id]
            row.attempts = failed.attempts
            row.last_error = failed.failure.error
            if failed.park:
                row.state = EventState.PARKED

    async def rewind(self) -> None:
        """The next fetch scans from the oldest due row."""
        self._cursor = 0
        self._in_flight.clear()

    async def backlog(self) -> Backlog:
        """Counts of pending and parked rows."""
        states = [row.state for row in self.rows.values()]
        return Backlog(
            pending_events=states.count(EventState.PENDING),
            parked_events=states.count(EventState.PARKED),
        )

    def connection_problems(self) -> Mapping[str, ConnectionProblem]:
        """What the test set in `problems`."""
        return dict(self.problems)


#: Decides the fate of one event: None (acknowledged) or a failure.
Rule = Callable[[OutboxEvent], PublishFailure | None]


class RecordingPublisher:
    """A `Publisher` that records what it published, with failures chosen by `rule`.

    Like `relay.kafka.KafkaPublisher`, an event that fails holds back the later
    events of its key within the call. `published` lists every event that "reached
    Kafka", in order, duplicates included.
    """

    def __init__(self, rule: Rule | None = None) -> None:
        self.rule: Rule = rule or (lambda _event: None)
        self.published: list[OutboxEvent] = []
        self.calls = 0
        self.started = False

    async def start(self) -> None:
        """Nothing to connect."""
        self.started = True

    async def stop(self) -> None:
        """Nothing to flush."""
        self.started = False

    async def publish(self, events: Sequence[OutboxEvent]) -> PublishResult:
        """Apply `rule` to each event, in order, holding back keys that failed."""
        await asyncio.sleep(0)
        self.calls += 1
        hold = decisions.KeyHold()
        failures: list[PublishFailure | None] = []
        for event in events:
            failure = (
                decisions.held_back(event.key or "") if hold.holds(event) else self.rule(event)
            )
            if failure is None:
                self.published.append(event)
            else:
                hold.block(event)
            failures.append(failure)
        return PublishResult(tuple(events), tuple(failures))
