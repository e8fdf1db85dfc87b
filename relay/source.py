"""The source: where the relay loop gets events from, and where it records their fate.

The loop (`relay.loop`) sees only the `Source` protocol. `relay.poll.PollSource` reads the
outbox table; the WAL source (``relay.wal``) tails logical replication. An in-memory fake
lives in `relay.testing`.

How the loop drives a source, in order::

    await source.start()
    while running:
        events = await source.fetch(batch_size)        # may run while the previous
        if not events:                                  # batch is being published
            await source.wait(poll_interval)
            continue
        ...publish...
        await source.acknowledge(acknowledgement)      # strictly in fetch order
        if not acknowledgement.complete:
            ...wait for every acknowledge to finish...
            await source.rewind()                      # then fetch again from the oldest
    await source.stop()                                 # unsettled event
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Protocol

from relay.events import Acknowledgement, OutboxEvent


@dataclasses.dataclass(frozen=True, slots=True)
class Backlog:
    """What is waiting in the source, for metrics and the periodic summary.

    None means the source cannot tell cheaply (e.g. pending events in WAL mode).
    """

    pending_events: int | None = None
    parked_events: int | None = None
    #: ``created_at`` of the oldest event not yet acknowledged.
    oldest_unsent_at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectionProblem:
    """One of a source's connections is down (or reconnecting): since when, and why."""

    #: What failed, the latest word on it ("" when unknown).
    error: str
    #: Monotonic seconds when it went down (the first failure, not the latest).
    since_s: float


class Source(Protocol):
    """Events in outbox order, and a durable record of what became of them.

    Contract the relay loop relies on:

    * **Order.** `fetch` returns events in outbox order (poll: by ``id``; WAL: by commit
      LSN, then position in the transaction). Two calls never return the same event
      unless `rewind` was called between them.
    * **Pipelining.** The loop calls `fetch` for the next batch while the previous batch
      is being published and while earlier batches are being acknowledged; `fetch` may
      wait for those acknowledgements when it needs to (the poll source does, at the
      start of a scan of the table with many rows in flight), and may be cancelled
      while it waits (the loop cancels it when an acknowledgement failed, or on
      shutdown). `fetch` and `acknowledge` may run concurrently; two `fetch` calls, or
      two `acknowledge` calls, never do.
    * **Acknowledge in order.** `acknowledge` is called once per fetched batch, in fetch
      order, with every event of the batch in exactly one of ``sent``, ``failed`` or
      ``unsettled``. When it returns, the ``sent`` events are durably settled (row
      marked sent or deleted; WAL: the confirmed LSN may advance past them once every
      earlier event is settled too) and will never be fetched again, even after a
      restart; ``failed`` events have their attempt and error recorded (and are parked
      when ``park`` is set). It must never settle an event that is not in ``sent`` or
      parked: an event the loop did not acknowledge stays due, so nothing is lost.
    * **Rewind.** After an acknowledgement that is not complete, the loop waits until no
      fetch or acknowledge is running, then calls `rewind`. The next `fetch` starts again
      from the oldest event that is neither sent nor parked, in order; events settled
      before are not returned again.
    * **Parked keys.** With the ``park`` poison policy, `fetch` must not return an event
      whose key has a parked event earlier in the outbox: it waits behind it until an
      operator releases (or skips) the parked event. With ``skip`` such events flow.
    * **Errors.** Methods raise `relay.errors.DatabaseError` when PostgreSQL cannot be
      reached; the loop backs off, rewinds and calls again, and the source reconnects
      by itself on that next call.

    Duplicates: an event acknowledged by Kafka whose `acknowledge` did not complete (crash,
    lost connection, shutdown timeout) is published again later. Every record carries an
    ``event_id`` header so consumers can drop such duplicates.
    """

    async def start(self) -> None:
        """Connect; raise `relay.errors.DatabaseError` when PostgreSQL cannot be reached."""

    async def stop(self) -> None:
        """Disconnect. Acknowledgements not yet made are simply lost (events stay due)."""

    async def fetch(self, max_events: int) -> Sequence[OutboxEvent]:
        """Up to `max_events` next events in order; empty when none is due right now."""
        ...

    async def wait(self, timeout_s: float) -> None:
        """Return when new events may be due (a notification), or after `timeout_s`.

        Cancelling it is safe: the loop cancels it on shutdown.
        """

    async def acknowledge(self, acknowledgement: Acknowledgement) -> None:
        """Durably record how one fetched batch was settled (see the class docstring)."""

    async def rewind(self) -> None:
        """Forget fetched, unsettled events: the next `fetch` starts from the oldest due one."""

    async def backlog(self) -> Backlog:
        """What is waiting, for metrics and the summary log; may cost a query."""
        ...

    def connection_problems(self) -> Mapping[str, ConnectionProblem]:
        """The connections that are down now, by name (e.g. ``WAL stream``); empty: all fine.

        No I/O: what the source saw last. /readyz names them (`relay.health`).
        """
        ...
