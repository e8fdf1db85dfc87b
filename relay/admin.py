"""What the operator commands do to the outbox: the only place they run SQL.

Everything here works beside a live relay without disturbing it. Reads use the primary
key or the partial indexes on pending and parked rows; writes go in small batches, each
its own short transaction, with a lock timeout so an operator never queues behind (and
so blocks) the relay.

Time ranges: ``created_at`` defaults to ``clock_timestamp()`` at insert, so it grows with
``id``. A time bound is therefore turned into an id bound with a binary search of
primary-key probes (`first_id_at_or_after`), and the exact ``created_at`` condition is
applied inside that id window; a query on the last hour of a ten-million-row outbox reads
the last hour's rows, not the table.

Replay re-inserts copies of the selected rows as new pending rows (new ``event_id``,
headers plus ``replayed: "true"`` and ``replay_of: <original event_id>``), in the order of
the originals and in batches of a few thousand per transaction. The live relay publishes
them in outbox order along with every new event, so per-key order holds by construction,
there is no second producer racing the relay, and the insert pace is the rate limit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, Self

import psycopg
import psycopg.errors
import psycopg.types.json
from psycopg import sql
from psycopg.abc import Buffer
from psycopg.rows import DictRow, dict_row
from psycopg.types.datetime import TimestamptzLoader

from relay import decisions, migrate
from relay import sql as relay_sql
from relay.config import Mode, OnSent, Settings, parse_duration
from relay.errors import ConfigError, DatabaseError, MigrationError, RelayError, first_line
from relay.events import EventState
from relay.leadership import Holder, holder_from
from relay.leadership import queries as leadership_queries
from relay.slot import SlotStatus, max_slot_wal_keep_size, slot_json, slot_status

Connection = psycopg.Connection[DictRow]

#: Rows changed per transaction by retry, skip, purge and replay.
BATCH_SIZE: Final = 5000
#: How long an operator statement waits for a row lock before giving up.
LOCK_TIMEOUT: Final = "5s"
CONNECT_TIMEOUT_S: Final = 10
#: Slack around a time bound when it becomes an id bound: rows inserted concurrently may
#: take their id and their timestamp in a slightly different order.
TIME_BOUND_MARGIN: Final = dt.timedelta(minutes=1)
#: The backward walk that counts recently sent events reads this many ids per query...
SENT_WALK_CHUNK_IDS: Final = 100_000
#: ...and gives up (reporting a lower bound) after reading this many (id gaps, which it
#: jumps over with one primary-key probe, do not count).
SENT_WALK_MAX_IDS: Final = 5_000_000
MINUTE: Final = dt.timedelta(minutes=1)
HOUR: Final = dt.timedelta(hours=1)


class BadInputError(RelayError):
    """A command argument is malformed (duration, timestamp, event id, topic)."""

    exit_code = 2


class NothingMatchedError(RelayError):
    """The selection matched no event (unknown event id, empty selection)."""

    exit_code = 3


# --- input parsing (pure) ---------------------------------------------------------------

#: A point in time: absolute, or that long before the database's ``now()``.
TimePoint = dt.datetime | dt.timedelta


def parse_time_point(text: str, what: str) -> TimePoint:
    """An ISO timestamp (UTC when it has no offset) or a duration ago such as ``2h``."""
    with contextlib.suppress(ValueError):
        return dt.timedelta(seconds=parse_duration(text))
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadInputError(
            f"invalid {what}: {text!r} is neither an ISO timestamp "
            "(2026-01-31T12:00:00+00:00) nor a duration ago (30s, 15m, 2h, 7d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment


def parse_seconds(text: str, what: str) -> float:
    """Seconds in a duration flag such as ``--older-than 7d``; one clear line when not."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise BadInputError(f"invalid {what}: {exc}") from None


def parse_event_id(text: str) -> str:
    """The canonical form of an event id (a UUID)."""
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise BadInputError(
            f"malformed event id {text!r}: expected a UUID such as "
            "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
        ) from None


def check_topic_name(topic: str) -> str:
    """`topic` when Kafka accepts it as a topic name (the outbox CHECK says the same)."""
    if not decisions.valid_topic(topic):
        raise BadInputError(f"invalid topic {topic!r}: use 1-249 letters, digits, '.', '_' or '-'")
    return topic


def resolve(point: TimePoint, now: dt.datetime) -> dt.datetime:
    """The absolute time of `point`, taking durations as that long before `now`."""
    return now - point if isinstance(point, dt.timedelta) else point


def first_id_at_or_after(
    moment: dt.datetime,
    probe: Callable[[int], tuple[int, dt.datetime] | None],
    min_id: int,
    max_id: int,
) -> int:
    """An id bound: rows from it on were created at or after `moment`, rows before it before.

    `probe(i)` returns the first row (id, created_at) with id >= i, or None. About
    log2(max_id - min_id) probes, each one primary-key lookup. Returns ``max_id + 1`` when
    every row is older than `moment`.
    """
    low, high = min_id, max_id + 1
    while low < high:
        middle = (low + high) // 2
        row = probe(middle)
        if row is None:
            high = middle
            continue
        row_id, created_at = row
        if created_at >= moment:
            high = middle  # ids in [middle, row_id) do not exist
        else:
            low = row_id + 1
    return low


def format_bytes(count: int | None) -> str:
    """A byte count with a binary unit (``512 B``, ``1.5 MiB``); ``-`` for None."""
    if count is None:
        return "-"
    value = float(count)
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    while abs(value) >= 1024 and len(units) > 1:  # noqa: PLR2004
        value /= 1024
        units.pop(0)
    return f"{value:.0f} B" if units[0] == "B" else f"{value:.1f} {units[0]}"


def pause_before_next(done: int, rate: float | None, elapsed_s: float) -> float:
    """Seconds to wait so that `done` events took at least ``done / rate`` seconds."""
    if not rate:
        return 0.0
    return max(0.0, done / rate - elapsed_s)


# --- connection -------------------------------------------------------------------------


class UnparsedJson(str):
    """``jsonb`` text that Python cannot decode or print back, shown as the text itself.

    Nesting deeper than the recursion limit, or an integer of more digits than ``int``
    converts: the table accepts them, and `inspect` and `show` must still display the row.
    """

    __slots__ = ()


def displayable_json(text: str | bytes) -> object:
    """A ``json``/``jsonb`` column's value for display: decoded, or `UnparsedJson`.

    The value must also print back (``show`` indents it), or it stays text.
    """
    try:
        value = json.loads(text)
        json.dumps(value, indent=2)
    except decisions.ROW_ERRORS:
        return UnparsedJson(text if isinstance(text, str) else text.decode())
    return value


class OutOfRangeTime(dt.datetime):
    """A ``timestamptz`` Python cannot hold (``infinity``, ``-infinity``, year 10000 on).

    It compares as the latest (or earliest) moment Python has, so sorting and ages
    still work, and prints as PostgreSQL's own text.
    """

    text: str

    def __new__(cls, text: str) -> Self:  # noqa: D102 - documented on the class
        past = text.startswith("-") or text.endswith(" BC")
        edge = (
            dt.datetime.min.replace(tzinfo=dt.UTC)
            if past
            else dt.datetime.max.replace(tzinfo=dt.UTC)
        )
        moment = super().__new__(
            cls,
            edge.year,
            edge.month,
            edge.day,
            edge.hour,
            edge.minute,
            edge.second,
            edge.microsecond,
            tzinfo=dt.UTC,
        )
        moment.text = text
        return moment

    def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:  # noqa: ARG002
        """PostgreSQL's text of the value."""
        return self.text


def time_text(moment: dt.datetime, fmt: str | None = None) -> str:
    """A time as the operator reads it: ISO 8601, or `fmt` in UTC.

    A value Python cannot hold prints as PostgreSQL's text.
    """
    if isinstance(moment, OutOfRangeTime):
        return moment.text
    if fmt is None:
        return moment.isoformat()
    return moment.astimezone(dt.UTC).strftime(fmt)


class _TimeLoader(TimestamptzLoader):
    """timestamptz for operator commands: any value loads, none fails the command."""

    def load(self, data: Buffer) -> dt.datetime:
        try:
            return super().load(data)
        except psycopg.DataError:
            return OutOfRangeTime(bytes(data).decode())


@contextlib.contextmanager
def connect(settings: Settings) -> Iterator[Connection]:
    """An autocommit connection for operator commands; psycopg errors become ours."""
    if not settings.database_url:
        raise ConfigError("no database URL: set --database-url or RELAY_DATABASE_URL")
    try:
        conn = psycopg.connect(
            settings.conninfo,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
            row_factory=dict_row,
            # Plans are made with the filter values, so absent filters fold away and a
            # state filter reaches its partial index; a prepared generic plan would not.
            prepare_threshold=None,
            application_name="outbox-relay admin",
        )
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot connect to the database: {first_line(exc)}") from None
    psycopg.types.json.set_json_loads(displayable_json, conn)
    conn.adapters.register_loader("timestamptz", _TimeLoader)
    try:
        with conn:
            conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
            yield conn
    except psycopg.errors.UndefinedTable:
        raise MigrationError(
            f"the outbox {settings.schema}.{settings.table} does not exist: "
            "run `outbox-relay migrate` (or check --schema/--table)"
        ) from None
    except psycopg.errors.LockNotAvailable:
        raise DatabaseError(
            f"gave up waiting {LOCK_TIMEOUT} for a row lock (a long transaction holds "
            "outbox rows); nothing was changed by the batch in flight, try again"
        ) from None
    except psycopg.errors.InsufficientPrivilege as exc:
        raise DatabaseError(f"permission denied: {first_line(exc)}") from None
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"lost the database connection: {first_line(exc)}") from None
    except psycopg.Error as exc:
        raise DatabaseError(f"database error: {first_line(exc)}") from None


def _names(settings: Settings) -> dict[str, sql.Composable]:
    return migrate.names_for(settings)


def named_query(settings: Settings, name: str, **extra: sql.Composable) -> sql.Composed:
    """The query `name` of ``relay/sql/admin.sql`` for the outbox of `settings`."""
    names = _names(settings)
    names["selection"] = relay_sql.query("admin", "selection", names)
    return relay_sql.query("admin", name, names | extra)


def _one(conn: Connection, query: sql.Composed, params: Mapping[str, object]) -> DictRow:
    row = conn.execute(query, params).fetchone()
    if row is None:  # pragma: no cover - aggregate queries always return a row
        raise DatabaseError("the database returned no row for an aggregate query")
    return row


# --- selections -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Selection:
    """Which outbox rows a command acts on; empty fields do not filter."""

    topics: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    event_ids: tuple[str, ...] = ()
    state: EventState | None = None
    since: TimePoint | None = None
    until: TimePoint | None = None
    #: Keyset bounds, exclusive: rows with after_id < id < before_id.
    after_id: int = 0
    before_id: int | None = None

    @property
    def filtered(self) -> bool:
        """True when anything narrows the selection beyond its state."""
        return bool(
            self.topics
            or self.keys
            or self.event_ids
            or self.since is not None
            or self.until is not None
            or self.after_id
            or self.before_id is not None
        )

    def describe(self) -> str:
        """The filters in words, for messages such as 'no parked event matches ...'."""
        parts = []
        if self.topics:
            parts.append("topic " + ", ".join(self.topics))
        if self.keys:
            parts.append("key " + ", ".join(self.keys))
        if self.event_ids:
            parts.append("event id " + ", ".join(self.event_ids))
        if self.since is not None:
            parts.append(f"since {_point_text(self.since)}")
        if self.until is not None:
            parts.append(f"until {_point_text(self.until)}")
        if self.after_id:
            parts.append(f"id > {self.after_id}")
        if self.before_id is not None:
            parts.append(f"id < {self.before_id}")
        return " and ".join(parts) if parts else "the whole outbox"


def _point_text(point: TimePoint) -> str:
    if isinstance(point, dt.timedelta):
        return f"{point.total_seconds():g}s ago"
    return point.isoformat()


@dataclasses.dataclass(frozen=True, slots=True)
class _Window:
    """A selection resolved against the database: query parameters and the time used."""

    params: dict[str, Any]
    now: dt.datetime
    max_id: int


def _probe(conn: Connection, settings: Settings) -> Callable[[int], tuple[int, dt.datetime] | None]:
    query = named_query(settings, "first_row_from")

    def probe(row_id: int) -> tuple[int, dt.datetime] | None:
        row = conn.execute(query, {"id": row_id}).fetchone()
        return None if row is None else (row["id"], row["created_at"])

    return probe


def _window(conn: Connection, settings: Settings, selection: Selection) -> _Window:
    bounds = _one(conn, named_query(settings, "id_range"), {})
    min_id: int = bounds["min_id"]
    max_id: int = bounds["max_id"]
    now: dt.datetime = bounds["now"]
    after_id = selection.after_id
    # Capping at today's last id keeps a replay from selecting its own copies.
    before_id = min(selection.before_id or max_id + 1, max_id + 1)
    since = until = None
    probe = _probe(conn, settings)
    if selection.since is not None:
        since = resolve(selection.since, now)
        bound = first_id_at_or_after(since - TIME_BOUND_MARGIN, probe, min_id, max_id)
        after_id = max(after_id, bound - 1)
    if selection.until is not None:
        until = resolve(selection.until, now)
        before_id = min(
            before_id, first_id_at_or_after(until + TIME_BOUND_MARGIN, probe, min_id, max_id)
        )
    params: dict[str, Any] = {
        "after_id": after_id,
        "before_id": before_id,
        "state": selection.state.value if selection.state else None,
        "topics": list(selection.topics) or None,
        "keys": list(selection.keys) or None,
        "event_ids": [uuid.UUID(e) for e in selection.event_ids] or None,
        "since": since,
        "until": until,
    }
    return _Window(params, now, max_id)


# --- rows -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class EventRow:
    """One outbox row as the operator sees it."""

    id: int
    event_id: str
    topic: str
    key: str | None
    state: str
    created_at: dt.datetime
    sent_at: dt.datetime | None
    attempts: int
    last_error: str | None
    parked_at: dt.datetime | None
    skip_reason: str | None
    event_type: str | None
    aggregate_type: str | None
    headers: dict[str, Any]
    payload: Any
    payload_bytes: bytes | None

    @classmethod
    def from_row(cls, row: DictRow) -> EventRow:
        """Build from a database row (``event_id`` comes back as a UUID)."""
        values = dict(row)
        values["event_id"] = str(values["event_id"])
        if values["payload_bytes"] is not None:
            values["payload_bytes"] = bytes(values["payload_bytes"])
        return cls(**values)

    def as_json(self) -> dict[str, Any]:
        """Plain JSON values: times in ISO 8601, binary payloads in hex."""
        result: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, dt.datetime):
                value = value.isoformat()
            elif isinstance(value, bytes):
                value = value.hex()
            result[field.name] = value
        return result


def list_events(
    conn: Connection,
    settings: Settings,
    selection: Selection,
    *,
    limit: int,
    newest_first: bool = False,
) -> list[EventRow]:
    """One page of rows in id order (keyset: the next page starts after the last id)."""
    window = _window(conn, settings, selection)
    direction = sql.SQL("DESC" if newest_first else "ASC")
    query = named_query(settings, "list_events", direction=direction)
    rows = conn.execute(query, window.params | {"limit": limit}).fetchall()
    return [EventRow.from_row(row) for row in rows]


def explain_list(conn: Connection, settings: Settings, selection: Selection, limit: int) -> str:
    """The plan PostgreSQL picks for `list_events` (tests check it uses an index)."""
    window = _window(conn, settings, selection)
    query = named_query(settings, "list_events", direction=sql.SQL("ASC"))
    rows = conn.execute(sql.SQL("EXPLAIN ") + query, window.params | {"limit": limit})
    return "\n".join(str(next(iter(row.values()))) for row in rows)


def get_event(conn: Connection, settings: Settings, ident: str) -> EventRow:
    """The row of an event id (a UUID), or of a row id (digits)."""
    if ident.strip().isdigit():
        row = conn.execute(named_query(settings, "event_by_id"), {"id": int(ident)}).fetchone()
        what = f"id {ident.strip()}"
    else:
        event_id = parse_event_id(ident)
        row = conn.execute(
            named_query(settings, "event_by_event_id"), {"event_id": uuid.UUID(event_id)}
        ).fetchone()
        what = f"event id {event_id}"
    if row is None:
        raise NothingMatchedError(f"no event with {what} in {settings.schema}.{settings.table}")
    return EventRow.from_row(row)


def count_selection(conn: Connection, settings: Settings, selection: Selection) -> dict[str, int]:
    """Matching rows per topic."""
    window = _window(conn, settings, selection)
    rows = conn.execute(named_query(settings, "count_selection"), window.params).fetchall()
    return {row["topic"]: row["events"] for row in rows}


# --- status -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TopicStatus:
    """The outbox figures of one topic."""

    topic: str
    pending: int = 0
    oldest_pending_at: dt.datetime | None = None
    parked: int = 0
    sent_last_minute: int | None = 0
    sent_last_hour: int | None = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Status:
    """A snapshot of the outbox for `outbox-relay status`."""

    now: dt.datetime
    topics: tuple[TopicStatus, ...]
    #: False when the walk counting sent events hit its limit: counts are lower bounds.
    sent_counts_complete: bool
    #: WAL mode: the slot's name (None in poll mode), the slot (None when it does not
    #: exist) and the server's ``max_slot_wal_keep_size`` in bytes (-1 for unlimited).
    slot_name: str | None = None
    slot: SlotStatus | None = None
    max_slot_wal_keep_size: int = -1
    #: False with ``on_sent = none``: rows stay pending after they are published, so the
    #: table cannot tell what waits (the slot can).
    pending_known: bool = True
    #: Who holds (or last held) the leadership; None when the outbox has no lease row
    #: (migration 0003 not applied) or the role may not read it.
    leader: Holder | None = None

    @property
    def pending(self) -> int:
        """Events waiting to be published."""
        return sum(t.pending for t in self.topics)

    @property
    def parked(self) -> int:
        """Events the relay gave up on until an operator retries or skips them."""
        return sum(t.parked for t in self.topics)

    @property
    def oldest_pending_at(self) -> dt.datetime | None:
        """Creation time of the oldest pending event."""
        times = [t.oldest_pending_at for t in self.topics if t.oldest_pending_at]
        return min(times) if times else None

    @property
    def oldest_pending_age_s(self) -> float:
        """Seconds the oldest pending event has waited (0 when none is pending)."""
        oldest = self.oldest_pending_at
        return max(0.0, (self.now - oldest).total_seconds()) if oldest else 0.0

    @property
    def sent_last_minute(self) -> int | None:
        """Events sent in the last minute (None when the rows do not record it)."""
        return _sum_known([t.sent_last_minute for t in self.topics])

    @property
    def sent_last_hour(self) -> int | None:
        """Events sent in the last hour (None when the rows do not record it)."""
        return _sum_known([t.sent_last_hour for t in self.topics])

    def as_json(self) -> dict[str, Any]:
        """The snapshot as plain JSON values."""
        known = self.pending_known
        return {
            "now": self.now.isoformat(),
            "pending": self.pending if known else None,
            "parked": self.parked,
            "oldest_pending_at": _iso(self.oldest_pending_at) if known else None,
            "oldest_pending_age_s": round(self.oldest_pending_age_s, 3) if known else None,
            "sent_last_minute": self.sent_last_minute,
            "sent_last_hour": self.sent_last_hour,
            "sent_counts_complete": self.sent_counts_complete,
            "topics": [
                {
                    "topic": t.topic,
                    "pending": t.pending if known else None,
                    "oldest_pending_at": _iso(t.oldest_pending_at) if known else None,
                    "parked": t.parked,
                    "sent_last_minute": t.sent_last_minute,
                    "sent_last_hour": t.sent_last_hour,
                }
                for t in self.topics
            ],
            "slot": (
                slot_json(self.slot_name, self.slot)
                | {"max_slot_wal_keep_size": self.max_slot_wal_keep_size}
                if self.slot_name is not None
                else None
            ),
            "leader": (
                self.leader.describe() | {"held": self.leader.held}
                if self.leader is not None
                else None
            ),
        }


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _sum_known(values: list[int | None]) -> int | None:
    if any(value is None for value in values):
        return None
    return sum(value for value in values if value is not None)


@dataclasses.dataclass(frozen=True, slots=True)
class Thresholds:
    """Limits beyond which `status` reports the outbox unhealthy (None: no limit)."""

    max_lag_s: float | None = None
    max_parked: int | None = None
    max_pending: int | None = None


def problems(status: Status, thresholds: Thresholds) -> list[str]:
    """What is wrong with `status`, one short sentence each; empty when healthy."""
    found = []
    if thresholds.max_lag_s is not None and status.oldest_pending_age_s > thresholds.max_lag_s:
        found.append(
            f"oldest pending event waited {status.oldest_pending_age_s:.1f}s "
            f"(max {thresholds.max_lag_s:g}s)"
        )
    if thresholds.max_parked is not None and status.parked > thresholds.max_parked:
        found.append(f"{status.parked} parked events (max {thresholds.max_parked})")
    if thresholds.max_pending is not None and status.pending > thresholds.max_pending:
        found.append(f"{status.pending} pending events (max {thresholds.max_pending})")
    slot, name = status.slot, status.slot_name
    if name is not None:
        if slot is None:
            found.append(f"replication slot {name} does not exist")
        elif slot.lost:
            found.append(f"replication slot {name} lost WAL it needed (wal_status lost)")
        elif not slot.active:
            found.append(f"replication slot {name} is inactive (no relay streams it)")
    return found


def walk_continues(
    sent_last_hour: int, pending: int, newest_created: dt.datetime | None, hour_ago: dt.datetime
) -> bool:
    """Whether the backward walk counting sent events must read the next older slice.

    A slice matters while it holds events sent in the last hour, events created in the
    last hour, or pending events (a backlog being drained sits just below its pending
    tail, created long ago but sent just now). The first slice with none of these ends
    the walk, so in steady state it reads about one hour of rows.
    """
    recent = newest_created is not None and newest_created >= hour_ago
    return sent_last_hour > 0 or pending > 0 or recent


def _sent_counts(
    conn: Connection, settings: Settings, min_id: int, max_id: int, now: dt.datetime
) -> tuple[dict[str, tuple[int, int]], bool]:
    query = named_query(settings, "sent_in_chunk")
    jump = named_query(settings, "last_id_at_or_below")
    counts: dict[str, tuple[int, int]] = {}
    high = max_id
    ids_read = 0
    while high >= min_id:
        if ids_read >= SENT_WALK_MAX_IDS:
            return counts, False
        low = max(high - SENT_WALK_CHUNK_IDS, min_id - 1)
        rows = conn.execute(
            query, {"low": low, "high": high, "minute_ago": now - MINUTE, "hour_ago": now - HOUR}
        ).fetchall()
        ids_read += high - low
        if not rows:
            # An empty slice is an id gap (a sequence set forward, rolled-back inserts,
            # purged rows) and says nothing about the rows below it: resume at the next
            # row down instead of ending the walk there.
            next_high: int | None = _one(conn, jump, {"id": low})["id"]
            if next_high is None:
                break
            high = next_high
            continue
        for row in rows:
            minute, hour = counts.get(row["topic"], (0, 0))
            counts[row["topic"]] = (minute + row["sent_last_minute"], hour + row["sent_last_hour"])
        newest = max((row["newest_created"] for row in rows), default=None)
        if not walk_continues(
            sum(row["sent_last_hour"] for row in rows),
            sum(row["pending"] for row in rows),
            newest,
            now - HOUR,
        ):
            break
        high = low
    return counts, True


def status(conn: Connection, settings: Settings) -> Status:
    """Pending, parked and recently sent events per topic; the slot in WAL mode."""
    bounds = _one(conn, named_query(settings, "id_range"), {})
    now: dt.datetime = bounds["now"]
    pending = {r["topic"]: r for r in conn.execute(named_query(settings, "pending_by_topic"))}
    parked = {r["topic"]: r for r in conn.execute(named_query(settings, "parked_by_topic"))}
    # Rows that are deleted once sent, or never marked, cannot tell what was sent.
    sent_recorded = settings.on_sent is OnSent.MARK
    sent: dict[str, tuple[int, int]] = {}
    complete = True
    if sent_recorded and bounds["max_id"]:
        sent, complete = _sent_counts(conn, settings, bounds["min_id"], bounds["max_id"], now)
    topics = []
    for topic in sorted(set(pending) | set(parked) | set(sent)):
        minute, hour = sent.get(topic, (0, 0))
        topics.append(
            TopicStatus(
                topic=topic,
                pending=pending[topic]["events"] if topic in pending else 0,
                oldest_pending_at=pending[topic]["oldest"] if topic in pending else None,
                parked=parked[topic]["events"] if topic in parked else 0,
                sent_last_minute=minute if sent_recorded else None,
                sent_last_hour=hour if sent_recorded else None,
            )
        )
    wal = settings.mode is Mode.WAL
    return Status(
        now=now,
        topics=tuple(topics),
        sent_counts_complete=complete,
        slot_name=settings.slot_name if wal else None,
        slot=slot_status(conn, settings.slot_name) if wal else None,
        max_slot_wal_keep_size=max_slot_wal_keep_size(conn) if wal else -1,
        pending_known=settings.on_sent is not OnSent.NONE,
        leader=_leader(conn, settings),
    )


def _leader(conn: Connection, settings: Settings) -> Holder | None:
    query = leadership_queries(settings.schema, settings.table)["holder"]
    try:
        with conn.transaction():
            row = conn.execute(query).fetchone()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InsufficientPrivilege):
        return None
    return holder_from(tuple(row.values()) if row else None)


# --- retry and skip ---------------------------------------------------------------------


def _change_parked(
    conn: Connection,
    settings: Settings,
    selection: Selection,
    *,
    query_name: str,
    extra: Mapping[str, object],
    batch_size: int,
    state: EventState = EventState.PARKED,
) -> int:
    selection = dataclasses.replace(selection, state=state)
    window = _window(conn, settings, selection)
    query = named_query(settings, query_name)
    params = window.params | dict(extra) | {"batch_size": batch_size}
    changed = 0
    while True:
        row = _one(conn, query, params)
        if row["last_id"] is None:
            break
        changed += row["changed"]
        params["after_id"] = row["last_id"]
    if not changed:
        raise NothingMatchedError(f"no {state} event matches {selection.describe()}")
    return changed


def retry(
    conn: Connection, settings: Settings, selection: Selection, *, batch_size: int = BATCH_SIZE
) -> int:
    """Release parked events: pending again, attempts reset. Returns how many.

    They keep their ids, so the relay publishes them before the later events of their
    key, which waited behind them.
    """
    return _change_parked(
        conn, settings, selection, query_name="retry_batch", extra={}, batch_size=batch_size
    )


def skip(
    conn: Connection,
    settings: Settings,
    selection: Selection,
    *,
    reason: str,
    state: EventState = EventState.PARKED,
    batch_size: int = BATCH_SIZE,
) -> int:
    """Give up on events: state ``skipped``, `reason` kept. Returns how many.

    `state` is ``parked`` (the usual case), or ``pending`` for a poison row the relay
    cannot get past: a pending row that the relay publishes meanwhile may be delivered
    and still end up ``skipped``; it is never lost.
    """
    if state not in {EventState.PARKED, EventState.PENDING}:
        raise BadInputError(f"only parked or pending events can be skipped, not {state}")
    return _change_parked(
        conn,
        settings,
        selection,
        query_name="skip_batch",
        extra={"reason": reason, "from_state": str(state)},
        batch_size=batch_size,
        state=state,
    )


# --- purge ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class PurgeResult:
    """What a purge removed (or, in a dry run, would remove)."""

    events: int
    cutoff: dt.datetime
    dry_run: bool


def purge(
    conn: Connection,
    settings: Settings,
    *,
    older_than: dt.timedelta,
    batch_size: int = BATCH_SIZE,
    dry_run: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> PurgeResult:
    """Delete sent and skipped events created more than `older_than` ago.

    Works forward by id in batches of `batch_size`, each its own transaction, rows locked
    by others skipped; pending and parked rows are never candidates, whatever happens
    to them meanwhile.
    """
    bounds = _one(conn, named_query(settings, "id_range"), {})
    cutoff: dt.datetime = bounds["now"] - older_than
    upper_id = first_id_at_or_after(
        cutoff + TIME_BOUND_MARGIN, _probe(conn, settings), bounds["min_id"], bounds["max_id"]
    )
    params: dict[str, Any] = {"upper_id": upper_id, "cutoff": cutoff, "after_id": 0}
    if dry_run:
        count = _one(conn, named_query(settings, "purgeable_count"), params)["events"]
        return PurgeResult(count, cutoff, dry_run=True)
    query = named_query(settings, "purge_batch")
    deleted = 0
    params["batch_size"] = batch_size
    while True:
        row = _one(conn, query, params)
        if row["last_id"] is None:
            break
        deleted += row["deleted"]
        params["after_id"] = row["last_id"]
        if on_batch is not None:
            on_batch(deleted)
    return PurgeResult(deleted, cutoff, dry_run=False)


# --- replay -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ReplayPlan:
    """The events a replay would copy, counted per topic, and the window that holds them."""

    by_topic: dict[str, int]
    params: dict[str, Any]

    @property
    def total(self) -> int:
        """Events selected."""
        return sum(self.by_topic.values())


@dataclasses.dataclass(frozen=True, slots=True)
class ReplayResult:
    """The copies a replay inserted: ids first_copy_id..last_copy_id (others interleave)."""

    copied: int
    first_copy_id: int | None
    last_copy_id: int | None


def replay_states(settings: Settings) -> EventState | None:
    """Which rows count as already sent: ``sent`` ones, or any when rows are never marked."""
    return None if settings.on_sent is OnSent.NONE else EventState.SENT


def plan_replay(conn: Connection, settings: Settings, selection: Selection) -> ReplayPlan:
    """Count what a replay of `selection` copies; empty selection is an error."""
    selection = dataclasses.replace(selection, state=replay_states(settings))
    window = _window(conn, settings, selection)
    rows = conn.execute(named_query(settings, "count_selection"), window.params).fetchall()
    by_topic = {row["topic"]: row["events"] for row in rows}
    if not by_topic:
        state = "sent " if selection.state else ""
        raise NothingMatchedError(f"no {state}event matches {selection.describe()}")
    return ReplayPlan(by_topic, window.params)


def replay(
    conn: Connection,
    plan: ReplayPlan,
    settings: Settings,
    *,
    to_topic: str | None = None,
    batch_size: int = BATCH_SIZE,
    rate: float | None = None,
    on_progress: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplayResult:
    """Insert copies of the planned events as new pending rows, in their original order.

    At most `rate` events per second; `on_progress` gets the running count after each
    batch. The selection window was fixed by the plan, so copies are never re-selected.
    """
    if rate:
        # Smaller batches when rate limited, so the pace is smooth rather than bursty.
        batch_size = max(1, min(batch_size, int(rate)))
    query = named_query(settings, "replay_batch")
    params = plan.params | {"to_topic": to_topic, "batch_size": batch_size}
    copied = 0
    first_copy_id: int | None = None
    last_copy_id: int | None = None
    started = clock()
    while True:
        row = _one(conn, query, params)
        if row["last_id"] is None:
            break
        copied += row["copied"]
        if first_copy_id is None:
            first_copy_id = row["first_copy_id"]
        last_copy_id = row["last_copy_id"] or last_copy_id
        params["after_id"] = row["last_id"]
        if on_progress is not None:
            on_progress(copied)
        sleep(pause_before_next(copied, rate, clock() - started))
    return ReplayResult(copied, first_copy_id, last_copy_id)


def unsent_copies(conn: Connection, settings: Settings, result: ReplayResult) -> tuple[int, int]:
    """Copies of `result` still pending, and copies the relay parked."""
    if result.first_copy_id is None or result.last_copy_id is None:
        return 0, 0
    row = _one(
        conn,
        named_query(settings, "unsent_in_range"),
        {"first_id": result.first_copy_id, "last_id": result.last_copy_id},
    )
    return row["pending"], row["parked"]
