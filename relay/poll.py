"""The poll source: pending rows of the outbox table, in id order.

No row locks and no long transactions: the relay that reads the table holds the outbox's
leadership (`relay.leadership`), so nobody else publishes these rows. Reads are plain
autocommit queries over the partial index of pending rows.

Scans. A scan reads forward from the oldest pending row, batch after batch, with
``id > last fetched id``, so the next batch is fetched while the previous one is still
being published and marked. When a fetch comes back short (caught up), the next fetch
starts a new scan from the oldest pending row, leaving out the rows fetched and not yet
acknowledged (or, when they are many, once they are acknowledged). A new scan is how the
relay finds rows that a forward cursor cannot see: rows of a transaction that committed
after later ids were already read, rows released from ``parked`` by an operator, and
rows left pending by a failed batch (`rewind`).

Per-key order around parked rows (``--poison park``): the fetch leaves out events whose
key has a parked row with a smaller id. An operator's release turns the parked row back
into ``pending`` behind the cursor; the fetch notices it in the same snapshot (the count
and id sum of parked rows changed since the scan began) and starts a new scan, so the
released row goes before the later events of its key.

Connections: one for fetching, one for marking (so both run at once), one that
``LISTEN``s for the trigger's notifications. Each reconnects on the next call after a
failure; errors surface as `DatabaseError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Final, cast

import psycopg
import structlog
from psycopg import sql

from relay import decisions
from relay import sql as relay_sql
from relay.config import OnSent, PoisonPolicy, Settings
from relay.connection import Connection, Row, connect
from relay.errors import DatabaseError, MigrationError, first_line
from relay.events import Acknowledgement, OutboxEvent
from relay.metrics import Metrics
from relay.source import Backlog, ConnectionProblem

log = structlog.get_logger("relay.poll")

#: Seconds between attempts to re-open the LISTEN connection after it broke.
LISTEN_RETRY_S: Final = 1.0
#: A new scan leaves out the rows still in flight by id when there are at most this many
#: (low rates: no waiting for the previous batch's mark); above, it waits for the marks.
MAX_EXCLUDED_IN_FLIGHT: Final = 1000

_Row = Row
_fromisoformat: Final = dt.datetime.fromisoformat


#: Session settings of the fetching connection. The fetch must walk the partial index of
#: pending rows in id order and stop after the batch; right after a burst of inserts the
#: table's statistics lag (autovacuum has not analysed it yet), and the planner, thinking
#: few rows match, prefers a bitmap scan of *every* pending row plus a sort: 300 ms
#: instead of 10 ms per batch on a 100k backlog. Only this session is affected.
FETCH_SESSION: Final = (
    # The disabled plans' huge costs must not make the planner compile the query.
    sql.SQL("SET jit = off"),
    sql.SQL("SET enable_bitmapscan = off"),
    sql.SQL("SET enable_seqscan = off"),
    sql.SQL("SET enable_sort = off"),
    # created_at is read as text and converted by `datetime.fromisoformat`.
    sql.SQL("SET datestyle = 'ISO'"),
)


def event_from_row(row: _Row, topic_template: str) -> OutboxEvent | decisions.Unreadable:
    """An `OutboxEvent` from a fetch row (after the two parked-signature columns).

    Or why the row cannot become one (its headers nest too deeply, hold a huge integer).
    """
    try:
        return _event_from_row(row, topic_template)
    except decisions.ROW_ERRORS as exc:
        return decisions.unreadable(row[2], row[5], row[12], exc)


def _event_from_row(row: _Row, topic_template: str) -> OutboxEvent:
    (
        _,
        _,
        id_,
        event_id,
        topic,
        key,
        payload_text,
        payload_bytes,
        headers_text,
        event_type,
        aggregate_type,
        created_at_text,
        attempts,
    ) = row
    if payload_text is not None:
        value: bytes | None = decisions.compact_json(payload_text)
    elif payload_bytes is not None:
        value = bytes(payload_bytes)
    else:
        value = None
    row_headers = decisions.row_headers(headers_text) if headers_text != "{}" else None
    return decisions.new_event(
        id_,
        event_id,
        decisions.route_topic(topic_template, topic, event_type, aggregate_type),
        key,
        value,
        decisions.kafka_headers(event_id, event_type, aggregate_type, row_headers),
        _fromisoformat(created_at_text),
        attempts,
        0,
    )


class PollSource:
    """`Source` over the outbox table; see the module docstring for how it scans."""

    def __init__(self, settings: Settings, *, metrics: Metrics | None = None) -> None:
        self._settings = settings
        #: Where rows parked by the fetch itself are counted (the loop counts the rest).
        self._metrics = metrics
        names = relay_sql.identifiers(settings.schema, settings.table)
        channel = relay_sql.notify_channel(settings.schema, settings.table)
        names["channel_name"] = sql.Identifier(channel)
        park = settings.poison is PoisonPolicy.PARK
        self._q_check = relay_sql.query("poll", "check", names)
        self._q_fetch = relay_sql.query("poll", "fetch_park" if park else "fetch_skip", names)
        self._q_settle = relay_sql.query(
            "poll", "delete_sent" if settings.on_sent is OnSent.DELETE else "mark_sent", names
        )
        self._q_failure = relay_sql.query("poll", "record_failure", names)
        self._q_backlog = relay_sql.query("poll", "backlog", names)
        self._q_listen = relay_sql.query("poll", "listen", names)
        self._park = park
        conninfo = settings.conninfo
        self._fetcher = Connection(conninfo, "fetching events", FETCH_SESSION)
        self._marker = Connection(conninfo, "marking events")
        self._conninfo = conninfo
        #: Last id of the current scan; None: the next fetch starts a new scan.
        self._cursor: int | None = None
        #: Parked rows' (count, id sum) when the current scan began.
        self._signature: tuple[int, Decimal] | None = None
        #: Ids fetched and not yet acknowledged: still pending in the table.
        self._in_flight: set[int] = set()
        self._all_acknowledged = asyncio.Event()
        self._all_acknowledged.set()
        self._notified = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Check the outbox exists, and start listening for notifications."""
        try:
            await self._fetcher.execute(self._q_check, {})
        except DatabaseError as exc:
            # The query ran and the table (or its schema) is missing; a database that
            # does not exist is a connection error, retried like any other.
            failed_query = str(exc).startswith(self._fetcher.failure_prefix)
            if failed_query and "does not exist" in str(exc):
                raise MigrationError(
                    f"outbox table {self._settings.schema}.{self._settings.table} not found: "
                    "run `outbox-relay migrate` first"
                ) from None
            raise
        self._listener = asyncio.create_task(self._listen(), name="listen")

    async def stop(self) -> None:
        """Stop listening and close the connections."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await self._fetcher.close()
        await self._marker.close()

    async def _listen(self) -> None:
        """Set `_notified` on every notification; reconnect when the connection breaks."""
        while True:
            try:
                conn = await connect(self._conninfo, "listening")
            except DatabaseError as exc:
                log.warning("cannot listen for notifications", error=str(exc))
                await asyncio.sleep(LISTEN_RETRY_S)
                continue
            try:
                async with conn:
                    await conn.execute(self._q_listen)
                    # Anything committed while we were not listening is found by a poll.
                    self._notified.set()
                    async for _ in conn.notifies():
                        self._notified.set()
            except psycopg.Error as exc:
                log.warning("notification connection lost", error=first_line(exc))
                await asyncio.sleep(LISTEN_RETRY_S)

    async def wait(self, timeout_s: float) -> None:
        """Return on a notification, or after `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._notified.wait(), timeout_s)
        self._notified.clear()

    async def fetch(self, max_events: int) -> Sequence[OutboxEvent]:
        """The next pending events in id order (see the module docstring)."""
        while True:
            new_scan = self._cursor is None
            if new_scan and len(self._in_flight) > MAX_EXCLUDED_IN_FLIGHT:
                # Too many rows in flight to leave out by id: wait until they are marked.
                await self._all_acknowledged.wait()
            in_flight = list(self._in_flight) if new_scan else []
            rows = await self._fetcher.execute(
                self._q_fetch,
                {"after": self._cursor or 0, "limit": max_events, "in_flight": in_flight},
            )
            signature = (rows[0][0], rows[0][1]) if rows else None
            if new_scan:
                self._signature = signature
            elif self._park and signature is not None and signature != self._signature:
                log.info("parked events changed; scanning again from the oldest pending event")
                self._cursor = None
                continue
            template = self._settings.topic_template
            converted = [event_from_row(row, template) for row in rows if row[2] is not None]
            if any(isinstance(item, decisions.Unreadable) for item in converted):
                topics = {
                    row[2]: decisions.route_topic(template, row[4], row[9], row[10])
                    for row in rows
                    if row[2] is not None
                }
                events = await self._park_unreadable(converted, topics)
                # Parking changed the parked rows' signature: scan again, so the fetch
                # leaves out the later events of the parked rows' keys.
                self._cursor = None
                if not events:
                    continue
            else:
                events = cast("list[OutboxEvent]", converted)
                self._cursor = events[-1].id if len(events) == max_events else None
            if events:
                self._in_flight.update(event.id for event in events)
                self._all_acknowledged.clear()
            return events

    async def _park_unreadable(
        self, converted: list[OutboxEvent | decisions.Unreadable], topics: dict[int, str]
    ) -> list[OutboxEvent]:
        """Park the rows that cannot become records; the events to publish of the rest.

        Each parked row counts in ``outbox_relay_events_parked`` under its topic (by row
        id in `topics`), like an event the loop parks after failed attempts.

        With ``--poison park``, the later events of a parked row's key stay pending (the
        next scan leaves them out, behind the parked row), like behind any parked event.
        """
        events: list[OutboxEvent] = []
        held: set[str] = set()
        for item in converted:
            if isinstance(item, decisions.Unreadable):
                log.error(
                    "parked an event that cannot become a record", id=item.id, error=item.reason
                )
                await self._fetcher.execute(
                    self._q_failure,
                    {
                        "id": item.id,
                        "attempts": item.attempts + 1,
                        "error": item.reason,
                        "park": True,
                    },
                )
                if self._metrics is not None:
                    self._metrics.events_parked.labels(topic=topics[item.id]).inc()
                if self._park and item.key is not None:
                    held.add(item.key)
            elif item.key is None or item.key not in held:
                events.append(item)
        return events

    async def acknowledge(self, acknowledgement: Acknowledgement) -> None:
        """Mark (or delete) the sent rows; count attempts and park the failed ones."""
        try:
            if acknowledgement.sent:
                await self._marker.execute(
                    self._q_settle,
                    {"ids": decisions.id_array(event.id for event in acknowledgement.sent)},
                )
            for failed in acknowledgement.failed:
                await self._marker.execute(
                    self._q_failure,
                    {
                        "id": failed.event.id,
                        "attempts": failed.attempts,
                        "error": failed.failure.error,
                        "park": failed.park,
                    },
                )
        finally:
            # Even when marking failed: a new scan must not wait for it forever (the
            # loop rewinds, and the rows, still pending, are published again).
            self._in_flight.difference_update(event.id for event in acknowledgement.sent)
            self._in_flight.difference_update(event.id for event in acknowledgement.unsettled)
            self._in_flight.difference_update(failed.event.id for failed in acknowledgement.failed)
            if not self._in_flight:
                self._all_acknowledged.set()

    async def rewind(self) -> None:
        """Forget what was fetched: the next fetch scans again from the oldest row."""
        self._cursor = None
        self._in_flight.clear()
        self._all_acknowledged.set()

    async def backlog(self) -> Backlog:
        """Pending and parked rows, and the creation time of the oldest pending one."""
        rows = await self._marker.execute(self._q_backlog, {})
        pending, parked, oldest = rows[0]
        oldest_at: dt.datetime | None = oldest
        return Backlog(pending_events=pending, parked_events=parked, oldest_unsent_at=oldest_at)

    def connection_problems(self) -> Mapping[str, ConnectionProblem]:
        """None to name: every call on a lost connection fails, and the loop says so."""
        return {}
