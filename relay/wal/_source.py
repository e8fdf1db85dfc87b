"""WAL mode: the outbox's inserts, read from a logical replication slot (pgoutput).

How it fits together:

* `relay.replication` holds the ``replication=database`` connection and its COPY BOTH
  stream; `relay.pgoutput` decodes the bytes; `relay.slot` checks the server, creates
  the publication and the slot, and reports the slot's lag.
* `StreamDecoder` (pure) turns frames into `WalTransaction` values: the outbox events
  of one committed transaction, in commit order. Only what the relay needs is decoded:
  inserts of the outbox relation and, when a prefix is set, transactional messages.
  Updates, deletes and truncates of the outbox are never published.
* `AckTracker` (pure) decides what the slot may confirm: the end LSN of the last
  transaction whose every event was acknowledged by Kafka *and* marked sent (or
  deleted, or parked) in the table, in commit order. While nothing is pending it
  confirms the server's position itself, so the slot moves with the rest of the WAL.
* `WalSource` does the I/O and hands events to the relay loop.

**The table stays the truth** (``--on-sent mark`` or ``delete``). The slot confirms a
transaction only after its rows left the ``pending`` state, so a pending row is either
still to be streamed (committed after the slot's confirmed position) or was missed by
the stream (written before the slot existed, or the slot was lost). At every start the
source first *sweeps* the pending rows visible in a snapshot, then streams: a row seen
by both is published once: the stream drops the rows of every transaction the sweep's
snapshot saw (`relay.wal._core.HandOver`; they were pending, so swept, or settled),
until it passes the WAL position read with the snapshot. That needs no memory per swept
row and no knowledge of earlier sessions: a source built after a PostgreSQL restart or a
lost leadership session replays the slot without publishing what was marked sent. A
release (an operator's ``retry``) sweeps only the released keys' rows the same way. A
mark that matches fewer rows than it was given (a commit streamed before it is visible)
keeps those transactions unconfirmed until a later mark finds the rows. When the slot
is created the sweep uses the snapshot the slot exported
(``CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT``), so nothing is seen twice and nothing
falls between the two. With ``--on-sent none`` the table keeps no record of what was
sent: there is no sweep, and a lost slot stops the relay.

**Table-less events** (``--message-prefix``): a service may write
``SELECT pg_logical_emit_message(true, '<prefix>', '<envelope>')`` in its transaction
instead of an outbox row. The envelope is a UTF-8 JSON object::

    {"topic": "orders",                 # required, a valid Kafka topic
     "key": "order-42",                 # optional string: the partition key
     "payload": {"any": "JSON"},        # the record value, sent as compact JSON,
     "payload_base64": "AAEC",          #   or raw bytes (base64), or neither: null value
     "headers": {"traceparent": "00-..."},  # optional, string values
     "event_id": "8e0c...",             # optional UUID; default: uuid5 of slot and LSN
     "event_type": "OrderPlaced", "aggregate_type": "order"}   # optional

Without an ``event_id`` the relay derives one from the slot name and the message's LSN,
so a message replayed after a crash carries the same id. Non-transactional messages
with the prefix are ignored (they may belong to a transaction that rolled back). A
message whose envelope cannot be read, or whose publishing keeps failing, is parked
as an outbox row (``state = 'parked'``, raw content in ``payload_bytes``, the reason in
``last_error``), so operators see and replay it like any parked event. A lost slot
cannot bring table-less events back: they exist only in the WAL.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import dataclasses
import datetime as dt
import json
import operator
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import psycopg
import psycopg.errors
import structlog
from psycopg import sql

from relay import connection
from relay.config import OnSent, PoisonPolicy, Settings
from relay.decisions import (
    EVENT_SLOTS,
    compact_json,
    compact_json_bytes,
    id_array,
    kafka_headers,
    new_event,
    route_topic,
    row_headers,
    valid_topic,
)
from relay.errors import DatabaseError, RelayError, first_line
from relay.events import Acknowledgement, FailedEvent, OutboxEvent
from relay.metrics import Metrics
from relay.pgoutput import BEGIN_BODY as _BEGIN_BODY
from relay.pgoutput import BEGIN_TAG as _BEGIN
from relay.pgoutput import COMMIT_BODY as _COMMIT_BODY
from relay.pgoutput import COMMIT_TAG as _COMMIT
from relay.pgoutput import INSERT_TAG as _INSERT
from relay.pgoutput import KEEPALIVE_TAG as _KEEPALIVE
from relay.pgoutput import MESSAGE_TAG as _MESSAGE
from relay.pgoutput import RELATION_ID as _RELATION_ID
from relay.pgoutput import RELATION_TAG as _RELATION
from relay.pgoutput import TRUNCATE_TAG as _TRUNCATE
from relay.pgoutput import XLOGDATA_HEADER_SIZE as _HEADER_SIZE
from relay.pgoutput import XLOGDATA_TAG as _XLOGDATA
from relay.pgoutput import (
    LogicalMessage,
    PgOutputError,
    Relation,
    decode_keepalive,
    decode_message,
    encode_standby_status,
    format_lsn,
    parse_lsn,
    pg_timestamp_to_datetime,
    read_insert_columns,
)
from relay.pgoutput import bytea_from_text as _bytea
from relay.replication import ReplicationConnection, ReplicationError
from relay.slot import (
    SlotStatus,
    WalSetupError,
    check_and_prepare,
    check_slot,
    fetch_slot_status,
)
from relay.slot import names as slot_names
from relay.source import Backlog, ConnectionProblem
from relay.sql import query
from relay.wal._core import (
    AckTracker,
    HandOver,
    ReleaseMerge,
    Snapshot,
    Unmarked,
    note_parked,
    parked_copy,
    unseen_rows,
    waits_behind,
)

log = structlog.get_logger("relay.wal")

#: Namespace of the event ids derived for table-less messages without one.
MESSAGE_EVENT_ID_NAMESPACE: Final = uuid.UUID("5b0e6f3e-2f43-4a4e-9c61-0c7c2a1f0e55")
#: Prefix of the relay's own heartbeat messages (never relayed).
HEARTBEAT_PREFIX: Final = "outbox-relay-heartbeat"
#: Topic under which an unreadable table-less message is parked (it named none).
INVALID_MESSAGE_TOPIC: Final = "outbox-relay.invalid-messages"

#: The outbox columns the stream reads, by name.
OUTBOX_COLUMNS: Final = (
    "id",
    "event_id",
    "topic",
    "key",
    "payload",
    "payload_bytes",
    "headers",
    "event_type",
    "aggregate_type",
    "created_at",
    "state",
    "attempts",
)


class EnvelopeError(ValueError):
    """A table-less message's content is not a valid envelope."""


@dataclasses.dataclass(frozen=True, slots=True)
class RejectedMessage:
    """A table-less message that cannot become an event; it is parked as it is."""

    lsn: int
    content: bytes
    event_id: str
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class UnreadableRow:
    """An outbox row the relay cannot turn into a record; it is parked with the reason."""

    id: int
    key: str | None
    reason: str
    #: The row's topic column: the label it counts under in ``outbox_relay_events_parked``.
    topic: str = ""


#: What turning a row into a record may raise on content the relay cannot relay (JSON
#: nested deeper than Python's parser goes, text that is not UTF-8, a bad bytea).
UNREADABLE: Final = (ValueError, TypeError, RecursionError, UnicodeDecodeError)


def unreadable_row(
    row_id: object, key: object, exc: BaseException, topic: object = None
) -> UnreadableRow:
    """The `UnreadableRow` for a row whose conversion raised `exc`."""
    text = _text(key)
    return UnreadableRow(
        int(row_id) if isinstance(row_id, (bytes, int, str)) else 0,
        text,
        f"cannot turn the row into a record: {type(exc).__name__}: {first_line(exc)[:200]}",
        _text(topic) or "",
    )


def _text(value: object) -> str | None:
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    return text if isinstance(text, str) else None


@dataclasses.dataclass(frozen=True, slots=True)
class WalTransaction:
    """The outbox events of one committed transaction, in the order it wrote them."""

    commit_lsn: int
    #: The end of the commit record: what the slot confirms once the events are done.
    end_lsn: int
    #: Commit time in microseconds since 2000-01-01 UTC, see `commit_time`.
    commit_time_us: int
    events: tuple[OutboxEvent, ...]
    rejected: tuple[RejectedMessage, ...] = ()
    #: The transaction's (32-bit) xid, from its Begin: what `relay.wal._core.HandOver`
    #: checks against the sweep's snapshot.
    xid: int = 0
    unreadable: tuple[UnreadableRow, ...] = ()

    @property
    def commit_time(self) -> dt.datetime:
        """The commit time as an aware datetime."""
        return pg_timestamp_to_datetime(self.commit_time_us)


# --- Events from rows and envelopes ---------------------------------------------------


def message_event_id(slot_name: str, lsn: int) -> str:
    """The event id of a table-less message without one: stable across replays."""
    return str(uuid.uuid5(MESSAGE_EVENT_ID_NAMESPACE, f"{slot_name}/{format_lsn(lsn)}"))


def _optional_str(envelope: dict[str, object], field: str) -> str | None:
    value = envelope.get(field)
    if value is None or isinstance(value, str):
        return value
    raise EnvelopeError(f"envelope field {field!r} must be a string")


def _envelope_value(envelope: dict[str, object]) -> bytes | None:
    if "payload_base64" in envelope:
        if envelope.get("payload") is not None:
            raise EnvelopeError("envelope has both payload and payload_base64")
        encoded = envelope["payload_base64"]
        if not isinstance(encoded, str):
            raise EnvelopeError("envelope field 'payload_base64' must be a string")
        try:
            return base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise EnvelopeError("envelope payload_base64 is not valid base64") from None
    if envelope.get("payload") is not None:
        return json.dumps(envelope["payload"], separators=(",", ":"), ensure_ascii=False).encode()
    return None


def decode_envelope(
    content: bytes,
    *,
    lsn: int,
    commit_lsn: int,
    commit_time: dt.datetime,
    slot_name: str,
    topic_template: str = "",
) -> OutboxEvent:
    """The event a table-less message carries (see the module docstring for the format).

    Raises:
        EnvelopeError: the content is not a valid envelope.

    """
    try:
        envelope = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EnvelopeError(f"envelope is not UTF-8 JSON: {exc}") from None
    if not isinstance(envelope, dict):
        raise EnvelopeError("envelope must be a JSON object")
    topic = envelope.get("topic")
    if not isinstance(topic, str) or not valid_topic(topic):
        raise EnvelopeError(f"envelope topic {topic!r} is not a valid Kafka topic")
    key = _optional_str(envelope, "key")
    event_type = _optional_str(envelope, "event_type")
    aggregate_type = _optional_str(envelope, "aggregate_type")
    event_id = _optional_str(envelope, "event_id") or message_event_id(slot_name, lsn)
    try:
        event_id = str(uuid.UUID(event_id))
    except ValueError:
        raise EnvelopeError(f"envelope event_id {event_id!r} is not a UUID") from None
    value = _envelope_value(envelope)
    own = envelope.get("headers")
    if own is not None and not isinstance(own, dict):
        raise EnvelopeError("envelope headers must be a JSON object")
    return OutboxEvent(
        id=0,
        event_id=event_id,
        topic=route_topic(topic_template, topic, event_type, aggregate_type),
        key=key,
        value=value,
        headers=kafka_headers(event_id, event_type, aggregate_type, own),
        created_at=commit_time,
        lsn=commit_lsn,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class OutboxShape:
    """Where the columns the relay reads sit in the outbox relation's rows."""

    relation_id: int
    positions: tuple[int, ...]
    #: How many leading columns hold every column the relay reads.
    width: int

    @classmethod
    def of(cls, relation: Relation) -> OutboxShape:
        """The shape of `relation`; it must have every column in `OUTBOX_COLUMNS`.

        Raises:
            WalSetupError: a column is missing (the table is not an outbox table).

        """
        by_name = {column.name: i for i, column in enumerate(relation.columns)}
        missing = [name for name in OUTBOX_COLUMNS if name not in by_name]
        if missing:
            raise WalSetupError(
                f"{relation.namespace}.{relation.name} has no column {missing[0]}: "
                "it is not an outbox table (run outbox-relay migrate)"
            )
        positions = tuple(by_name[name] for name in OUTBOX_COLUMNS)
        return cls(relation.relation_id, positions, max(positions) + 1)


# An `OutboxEvent` built through its slots (see `relay.decisions.EVENT_SLOTS`), inline:
# once per streamed event.
(
    _set_id, _set_event_id, _set_topic, _set_key, _set_value, _set_headers,
    _set_created_at, _set_attempts, _set_lsn,
) = EVENT_SLOTS  # fmt: skip
_new_object: Final = object.__new__
_fromisoformat: Final = dt.datetime.fromisoformat


def event_from_row(
    shape: OutboxShape,
    row: Sequence[Any],
    *,
    commit_lsn: int,
    topic_template: str = "",
) -> OutboxEvent | None:
    """The event of an inserted outbox row, or None when it was not inserted pending.

    The same record as `relay.decisions.kafka_headers` and `compact_json` build from the
    table, made from the text values as they are in the frame: the header values
    ``event_id``, ``event_type`` and ``aggregate_type`` are those bytes.
    """
    (
        p_id, p_event_id, p_topic, p_key, p_payload, p_payload_bytes, p_headers,
        p_event_type, p_aggregate_type, p_created_at, p_state, p_attempts,
    ) = shape.positions  # fmt: skip
    # The hot path of WAL mode: one call per streamed event, so no helper calls for
    # what a conditional expression does (text values are bytes, NULL is None).
    if row[p_state] != b"pending":
        return None
    raw_event_id: bytes = row[p_event_id] or b""
    headers = [("event_id", raw_event_id)]
    raw = row[p_event_type]
    if raw is not None:
        headers.append(("event_type", raw))
    raw = row[p_aggregate_type]
    if raw is not None:
        headers.append(("aggregate_type", raw))
    raw = row[p_headers]
    if raw is not None and raw != b"{}":
        for name, value in row_headers(raw.decode()).items():
            if name != "event_id":
                headers.append((name, value))
    raw = row[p_topic]
    topic: str = raw.decode() if raw is not None else ""
    if topic_template:
        raw = row[p_event_type]
        event_type = raw.decode() if raw is not None else None
        raw = row[p_aggregate_type]
        topic = route_topic(
            topic_template, topic, event_type, raw.decode() if raw is not None else None
        )
    event: OutboxEvent = _new_object(OutboxEvent)
    _set_id(event, int(row[p_id]))
    _set_event_id(event, raw_event_id.decode())
    _set_topic(event, topic)
    raw = row[p_key]
    _set_key(event, raw.decode() if raw is not None else None)
    raw = row[p_payload]
    _set_value(event, compact_json_bytes(raw) if raw is not None else _bytea(row[p_payload_bytes]))
    _set_headers(event, tuple(headers))
    raw = row[p_created_at]
    _set_created_at(event, _fromisoformat(raw.decode()) if raw is not None else None)
    raw = row[p_attempts]
    _set_attempts(event, int(raw) if raw is not None else 0)
    _set_lsn(event, commit_lsn)
    return event


# --- The stream -----------------------------------------------------------------------


class StreamDecoder:
    """Turns replication frames into committed `WalTransaction` values. Pure, no I/O."""

    def __init__(
        self,
        *,
        schema: str,
        table: str,
        slot_name: str,
        message_prefix: str = "",
        topic_template: str = "",
        message_topics: frozenset[str] = frozenset(),
    ) -> None:
        self.schema = schema
        #: The only topics a table-less message may publish to: a service that may call
        #: pg_logical_emit_message must not reach every topic the relay can write.
        self.message_topics = message_topics
        self.table = table
        self.slot_name = slot_name
        self.message_prefix = message_prefix
        self.topic_template = topic_template
        self.shape: OutboxShape | None = None
        #: The server's end of WAL as last reported (keepalive or XLogData header).
        self.wal_end = 0
        #: Whether a keepalive asked for a status update since `take_reply_request`.
        self.reply_requested = False
        #: True between a Begin and its Commit.
        self.in_transaction = False
        self.truncated = 0
        #: The source's hand-overs in progress (shared): inserts of a transaction a
        #: whole-table sweep saw are skipped undecoded (they are the sweep's).
        self.handovers: list[HandOver] = []
        self._rows_swept = False
        self._commit_lsn = 0
        self._xid = 0
        self._commit_time_us = 0
        self._events: list[OutboxEvent] = []
        self._rejected: list[RejectedMessage] = []
        self._unreadable: list[UnreadableRow] = []

    def take_reply_request(self) -> bool:
        """Whether the server asked for a reply; resets the flag."""
        requested, self.reply_requested = self.reply_requested, False
        return requested

    def feed(self, frames: Iterable[bytes], out: list[WalTransaction]) -> None:
        """Decode `frames` in order; append every transaction that committed to `out`.

        Raises:
            PgOutputError: a frame is malformed.
            WalSetupError: the outbox relation lacks a column the relay reads.

        """
        # The hot loop: three frames per single-row transaction. Begin, Commit and the
        # outbox's inserts are handled inline; everything else is rare.
        events = self._events
        for frame in frames:
            if frame[0] != _XLOGDATA:
                self._keepalive(frame)
                continue
            kind = frame[_HEADER_SIZE]
            if kind == _INSERT:
                shape = self.shape
                if (
                    shape is not None
                    and not self._rows_swept
                    and (_RELATION_ID.unpack_from(frame, _HEADER_SIZE + 1)[0] == shape.relation_id)
                ):
                    row = read_insert_columns(frame, shape.width)
                    try:
                        event = event_from_row(
                            shape,
                            row,
                            commit_lsn=self._commit_lsn,
                            topic_template=self.topic_template,
                        )
                    except UNREADABLE as exc:
                        # Parked, never a stream that fails on every reconnect.
                        positions = shape.positions
                        self._unreadable.append(
                            unreadable_row(
                                row[positions[0]], row[positions[3]], exc, row[positions[2]]
                            )
                        )
                        continue
                    if event is not None:
                        events.append(event)
            elif kind == _BEGIN:
                self._commit_lsn, self._commit_time_us, self._xid = _BEGIN_BODY.unpack_from(
                    frame, _HEADER_SIZE + 1
                )
                if self.handovers:
                    self._rows_swept = any(
                        h.keys is None and h.swept(self._commit_lsn, self._xid)
                        for h in self.handovers
                    )
                self.in_transaction = True
            elif kind == _COMMIT:
                _flags, commit_lsn, end_lsn, commit_time_us = _COMMIT_BODY.unpack_from(
                    frame, _HEADER_SIZE + 1
                )
                # Not the frame's walEnd: only keepalives say how far the server has sent.
                self.wal_end = max(self.wal_end, end_lsn)
                out.append(
                    WalTransaction(
                        commit_lsn,
                        end_lsn,
                        commit_time_us,
                        tuple(events),
                        tuple(self._rejected) if self._rejected else (),
                        self._xid,
                        tuple(self._unreadable) if self._unreadable else (),
                    )
                )
                events.clear()
                self._rejected.clear()
                self._unreadable.clear()
                self.in_transaction = False
                self._rows_swept = False
            else:
                self._other(frame, kind)

    def _keepalive(self, frame: bytes) -> None:
        if frame[0] != _KEEPALIVE:
            raise PgOutputError(f"unknown replication frame tag {frame[0]:#04x}")
        keepalive = decode_keepalive(frame)
        self.wal_end = max(self.wal_end, keepalive.wal_end)
        if keepalive.reply_requested:
            self.reply_requested = True

    def _other(self, frame: bytes, kind: int) -> None:
        if kind == _RELATION:
            relation = decode_message(frame, _HEADER_SIZE)
            assert isinstance(relation, Relation)  # noqa: S101 - the tag said so
            if relation.namespace == self.schema and relation.name == self.table:
                self.shape = OutboxShape.of(relation)
        elif kind == _MESSAGE:
            message = decode_message(frame, _HEADER_SIZE)
            assert isinstance(message, LogicalMessage)  # noqa: S101 - the tag said so
            self._message(message)
        elif kind == _TRUNCATE:
            self.truncated += 1
        # Updates and deletes (marking rows sent), Origin and Type: nothing to publish.

    def _message(self, message: LogicalMessage) -> None:
        prefix = self.message_prefix
        if not prefix or message.prefix != prefix or not message.transactional:
            return
        commit_time = pg_timestamp_to_datetime(self._commit_time_us)
        try:
            event = decode_envelope(
                message.content,
                lsn=message.lsn,
                commit_lsn=self._commit_lsn,
                commit_time=commit_time,
                slot_name=self.slot_name,
                topic_template=self.topic_template,
            )
            if event.topic not in self.message_topics:
                raise EnvelopeError(  # noqa: TRY301 - parked like any unreadable envelope
                    f"topic {event.topic!r} is not in message_topics (--message-topics)"
                )
        except EnvelopeError as exc:
            self._rejected.append(
                RejectedMessage(
                    message.lsn,
                    message.content,
                    message_event_id(self.slot_name, message.lsn),
                    str(exc),
                )
            )
            return
        self._events.append(event)


# --- The source -----------------------------------------------------------------------

#: Events decoded ahead of the loop; the stream is not read further while this many wait.
MAX_QUEUED_EVENTS: Final = 50_000
#: Nor while the payloads, keys and headers (`queued_size`) of the events decoded and not
#: settled yet, queued or in flight in the loop, add up to this many bytes: through a
#: broker outage the queue fills, and with the count cap alone its memory grew with the
#: payload size (199 MB RSS at 2 KB payloads against issue 9's 150 MB). The events in
#: flight count too, or a rewound batch (2000 events of 10 KB: 20 MB) would come on top.
#: With 32 MiB `bench/wal_memory.py --outage-seconds` peaks at 99 MB (2 KB payloads) and
#: 88 MB (10 KB); the worst case, where both caps bind at once (about 650 bytes an
#: event), at 130 MB.
MAX_QUEUED_BYTES: Final = 32 * 1024 * 1024
#: A standby status update goes at least this often (the server times out at 60 s).
STATUS_INTERVAL_S: Final = 1.0
#: After an acknowledgement the new position is sent at once unless one went this recently.
STATUS_MIN_GAP_S: Final = 0.05
#: How often parked rows are re-read, to notice events an operator released.
PARKED_REFRESH_S: Final = 5.0
#: How often the slot's lag is read from the server for metrics.
LAG_REFRESH_S: Final = 5.0
#: How often the slot's lag is logged.
LAG_LOG_S: Final = 60.0
#: Rows read per query by a sweep of pending rows, at most,
SWEEP_CHUNK: Final = 5000
#: and about this many bytes of content (payload, headers) per query once the first
#: chunk told the rows' size: 5000 rows of 10 KB would be 50 MB in one result.
SWEEP_CHUNK_BYTES: Final = 8 * 1024 * 1024
#: Rows of a sweep's first query, before their size is known.
SWEEP_FIRST_CHUNK: Final = 100


def next_sweep_chunk(rows: int, content_bytes: int) -> int:
    """Rows for a sweep's next query, after one returned `rows` of `content_bytes`."""
    if rows <= 0 or content_bytes <= 0:
        return SWEEP_CHUNK
    return max(1, min(SWEEP_CHUNK, rows * SWEEP_CHUNK_BYTES // content_bytes))


#: How long a mark that missed rows retries before it leaves their transaction
#: unconfirmed (and retries again with the next acknowledgement and status update).
MARK_VISIBLE_WAIT_S: Final = 1.0
MARK_RETRY_S: Final = 0.02
#: Seconds `WalSource.stop` may take; a hung server must not hang the shutdown.
STOP_TIMEOUT_S: Final = 5.0
#: Session settings of the sweep's connection: created_at is read as text and converted
#: by `datetime.fromisoformat` row by row, so a time Python has no datetime for
#: ('infinity', a year past 9999) parks that row instead of failing every sweep.
SWEEP_SESSION: Final = (sql.SQL("SET datestyle = 'ISO'"),)


def queued_size(events: Iterable[OutboxEvent]) -> int:
    """The bytes `events` hold that grow with their content: value, key and headers.

    What `MAX_QUEUED_BYTES` counts (the fixed cost of an event is `MAX_QUEUED_EVENTS`'s
    business). A loop, not nested generators: it runs twice per event on the hot path.
    """
    size = 0
    for event in events:
        value, key = event.value, event.key
        if value is not None:
            size += len(value)
        if key is not None:
            size += len(key)
        for _name, header in event.headers:
            size += len(header)
    return size


def queue_has_room(queued_events: int, queued_bytes: int) -> bool:
    """Whether the stream may decode more with this much queued ahead of the loop.

    An empty queue always has room, so a transaction (or an event) larger than the caps
    still goes through: the caps only stop reading further while something waits.
    """
    return not queued_events or (
        queued_events < MAX_QUEUED_EVENTS and queued_bytes < MAX_QUEUED_BYTES
    )


class SlotLostError(RelayError):
    """The slot was lost and ``--on-sent none`` left no record of what was sent."""


@dataclasses.dataclass(slots=True)
class _Fetched:
    """Events handed to the loop and not settled yet, in fetch order."""

    events: list[OutboxEvent] = dataclasses.field(default_factory=list)
    #: id() of events settled (sent or parked), and replacements of failed ones.
    settled: set[int] = dataclasses.field(default_factory=set)
    replaced: dict[int, OutboxEvent] = dataclasses.field(default_factory=dict)

    def unsettled(self) -> list[OutboxEvent]:
        settled, replaced = self.settled, self.replaced
        return [replaced.get(id(e), e) for e in self.events if id(e) not in settled]

    def prune(self) -> None:
        # Drop the settled prefix so the list stays as long as what is in flight.
        events, settled = self.events, self.settled
        cut = 0
        while cut < len(events) and id(events[cut]) in settled:
            settled.discard(id(events[cut]))
            cut += 1
        if cut:
            del events[:cut]
        if not events:
            settled.clear()
            self.replaced.clear()

    def clear(self) -> None:
        self.events.clear()
        self.settled.clear()
        self.replaced.clear()


@dataclasses.dataclass(slots=True)
class _SweepState:
    """A sweep of pending rows in progress (its transaction is open)."""

    #: Ids already queued or in flight from the stream: not queued twice.
    outstanding: set[int]
    #: Parked keys and their first parked row (`relay.wal._core.waits_behind`).
    parked_keys: dict[str, int]
    #: Only these keys' rows (a release), or every pending row.
    keys: frozenset[str] | None = None
    #: Released rows without a key (a release).
    ids: list[int] = dataclasses.field(default_factory=list)
    #: A release's queued events of its keys, merged into the swept rows in id order.
    merge: ReleaseMerge | None = None
    after_id: int = 0
    swept: int = 0
    #: Rows the next query asks for (`next_sweep_chunk`).
    limit: int = 0


class WalSource:
    """`relay.source.Source` over a logical replication slot (see the module docstring)."""

    def __init__(self, settings: Settings, *, metrics: Metrics | None = None) -> None:
        self._settings = settings
        self._metrics = metrics
        self._names = slot_names(settings)
        self._track_rows = settings.on_sent is not OnSent.NONE
        self._park_keys = settings.poison is PoisonPolicy.PARK
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._sweep_conn: psycopg.AsyncConnection[Any] | None = None
        self._replication: ReplicationConnection | None = None
        self._decoder = self._new_decoder()
        self._tracker = AckTracker()
        self._queue: collections.deque[OutboxEvent] = collections.deque()
        #: `queued_size` of the events decoded and not settled (queued, or fetched and
        #: not acknowledged): added as they are queued, subtracted as they are settled or
        #: held, recounted after a rebuild or reconnect, zeroed when none is left.
        self._held_bytes = 0
        self._fetched = _Fetched()
        #: Events fetched from a stream before a reconnect, by id() (the values keep them
        #: alive, so an id cannot be reused). Their transactions are tracked by the old
        #: stream's tracker: counting them in the new one would confirm a replayed
        #: transaction before its own copies settle.
        self._stale: dict[int, OutboxEvent] = {}
        #: The tracker of the stream the stale events came from (it knows their xids).
        self._stale_tracker: AckTracker | None = None
        self._reader: asyncio.Task[None] | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._side_tasks: list[asyncio.Task[None]] = []
        self._broken: BaseException | None = None
        #: The connections down until the next reconnect succeeds, for /readyz.
        self._down: dict[str, ConnectionProblem] = {}
        self._has_events = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        #: The sweeps whose snapshot the stream has not passed yet: a streamed row of a
        #: transaction one of them saw is the sweep's (pending then) or settled.
        self._handovers: list[HandOver] = []
        self._decoder.handovers = self._handovers
        #: Sent events whose mark found no row yet (their transaction was decoded but is
        #: not visible yet): their transactions stay unconfirmed until a mark finds them.
        self._unmarked = Unmarked()
        self._parked_ids: set[int] = set()
        #: Parked keys, each with the id of its first parked row: the events after it
        #: wait (`relay.wal._core.waits_behind`).
        self._parked_keys: dict[str, int] = {}
        self._parked_checked_s = 0.0
        self._last_status_s = 0.0
        self._sent_confirmed = -1
        self._heartbeat_ok = True
        self._sweep_state: _SweepState | None = None
        #: True while decoded transactions are being queued and tracked (it may wait for
        #: the database): the server's position is not safe to confirm meanwhile.
        self._accepting = False
        self._conn_lock = asyncio.Lock()

    def _new_decoder(self) -> StreamDecoder:
        s = self._settings
        return StreamDecoder(
            schema=s.schema,
            table=s.table,
            slot_name=s.slot_name,
            message_prefix=s.message_prefix,
            topic_template=s.topic_template,
            message_topics=message_topics(s),
        )

    # -- Source protocol ------------------------------------------------------------

    async def start(self) -> None:
        """Connect, check the server, create what is missing, sweep, start streaming."""
        await self._connect()
        self._side_tasks = [self._side_task("wal-status"), self._side_task("wal-heartbeat")]

    def _supervise(self) -> None:
        """Restart a side task that ended (it must run as long as the source does)."""
        for index, task in enumerate(self._side_tasks):
            if not task.done():
                continue
            error = None if task.cancelled() else task.exception()
            log.error("wal side task ended; restarting it", task=task.get_name(), error=str(error))
            self._side_tasks[index] = self._side_task(task.get_name())

    def _side_task(self, name: str) -> asyncio.Task[None]:
        loop = self._status_loop() if name == "wal-status" else self._heartbeat_loop()
        return asyncio.create_task(loop, name=name)

    async def stop(self) -> None:
        """Send the last confirmed position and disconnect, in `STOP_TIMEOUT_S` at most."""
        for task in self._side_tasks:
            task.cancel()
        for task in self._side_tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._side_tasks = []
        reconnecting = self._reconnecting
        if reconnecting is not None:
            reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reconnecting
        with contextlib.suppress(ReplicationError):
            self._send_status(force=True)
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                async with self._conn_lock:
                    await self._disconnect()
        except TimeoutError:
            log.warning("disconnecting from PostgreSQL timed out", timeout_s=STOP_TIMEOUT_S)

    async def fetch(self, max_events: int) -> Sequence[OutboxEvent]:
        """The next events in commit order; reconnects first after a broken stream.

        Cancel-safe: an event leaves the queue only at a point where no await follows
        before it is returned, or is put back in front when one fails.
        """
        self._supervise()
        conn, sweep_conn = self._conn, self._sweep_conn
        if (
            self._replication is None
            or conn is None
            or conn.broken
            or sweep_conn is None
            or sweep_conn.broken
            or (self._broken is not None and not self._queue)
        ):
            self._went_down_if_broken(main=conn, sweep=sweep_conn)
            await self._reconnect_shielded()
        if self._sweep_state is not None:
            # Never a release sweep meanwhile: it would take over the sweep's state and
            # transaction, and the rest of this sweep's rows (the stream drops them: its
            # snapshot saw them) would never be queued. Releases are noticed after it.
            # The byte cap too: a rewound batch (an outage) must not make room for more.
            queued = len(self._queue)
            if queued < 2 * max_events and queue_has_room(queued, self._held_bytes):
                await self._continue_sweep()
        elif self._track_rows and time.monotonic() - self._parked_checked_s > PARKED_REFRESH_S:
            await self._refresh_parked()
        queue = self._queue
        if not queue:
            return ()
        if self._park_keys and self._parked_keys:
            batch = await self._hold_parked_keys(max_events)
        else:
            batch = [queue.popleft() for _ in range(min(max_events, len(queue)))]
        if not queue:
            self._has_events.clear()
        if self._sweep_state is None and queue_has_room(len(queue), self._held_bytes):
            self._room.set()
        self._fetched.events.extend(batch)
        return batch

    async def _hold_parked_keys(self, max_events: int) -> list[OutboxEvent]:
        """Leave out events whose key waits behind a parked event (``--poison park``).

        A held row stays pending in the table, and the sweep after an operator's release
        publishes it; a held table-less event becomes such a row. Either way the stream
        counts it as settled, so the slot moves on.
        """
        kept: list[OutboxEvent] = []
        parked_keys = self._parked_keys
        queue = self._queue
        try:
            while queue and len(kept) < max_events:
                event = queue[0]
                if not waits_behind(event.key, event.id, parked_keys):
                    kept.append(queue.popleft())
                    continue
                if not event.id:
                    # Before the event leaves the queue: cancelled here, it stays queued
                    # (the insert is idempotent: ON CONFLICT (event_id) DO NOTHING).
                    await self._hold_message(event)
                queue.popleft()
                self._held_bytes -= queued_size((event,))
                if event.lsn and self._counts(event):
                    self._tracker.done(event.lsn)
        except BaseException:
            queue.extendleft(reversed(kept))
            raise
        return kept

    async def wait(self, timeout_s: float) -> None:
        """Return when events are queued or the stream broke, or after `timeout_s`."""
        if self._queue or self._broken is not None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._has_events.wait()

    async def acknowledge(self, acknowledgement: Acknowledgement) -> None:
        """Settle rows in the table, then let the slot confirm what is fully settled."""
        fetched = self._fetched
        settled = fetched.settled
        sent: Sequence[OutboxEvent] = acknowledgement.sent
        try:
            missing = await self._settle_in_table(acknowledgement)
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot settle events: {first_line(exc)}") from None
        settled.update(map(id, sent))
        settled_size = queued_size(sent)
        if missing:
            unmarked = [event for event in sent if event.id in missing]
            log.warning(
                "sent events not visible in the table yet (their commit waits, e.g. for a "
                "synchronous standby): the slot does not confirm them until they are marked",
                events=len(unmarked),
                first_id=unmarked[0].id,
            )
            self._unmarked.add(unmarked)
            sent = [event for event in sent if event.id not in missing]
        done = self._settled_per_transaction(sent)
        for failed in acknowledgement.failed:
            if failed.park:
                settled.add(id(failed.event))
                settled_size += queued_size((failed.event,))
                if self._counts(failed.event):
                    done[failed.event.lsn] += 1
            else:
                retry = dataclasses.replace(failed.event, attempts=failed.attempts)
                fetched.replaced[id(failed.event)] = retry
                if self._stale.pop(id(failed.event), None) is not None:
                    self._stale[id(retry)] = retry
        for lsn, count in done.items():
            if lsn:
                self._tracker.done(lsn, count)
        fetched.prune()
        self._settled_bytes(settled_size)
        self._send_status()

    def _settled_bytes(self, size: int) -> None:
        """Events of `size` bytes were settled: the stream may read on below the cap."""
        self._held_bytes -= size
        if not self._fetched.events and not self._queue:
            self._held_bytes = 0  # none left: nothing can have drifted
        if self._sweep_state is None and queue_has_room(len(self._queue), self._held_bytes):
            self._room.set()

    async def _settle_in_table(self, acknowledgement: Acknowledgement) -> set[int]:
        """Mark the sent rows, record the failures; the ids of sent rows not visible yet."""
        sent = [event for event in acknowledgement.sent if event.id]
        missing: set[int] = set()
        if self._unmarked:
            await self._retry_unmarked()
        if sent and self._track_rows:
            missing = await self._mark(sent)
        # The lock keeps a reconnect (fetch runs beside us) from closing the
        # connection under a statement, which would then wait forever.
        async with self._conn_lock:
            conn = self._require_conn()
            for failed in acknowledgement.failed:
                await self._record_failure(conn, failed)
        if missing:
            missing = await self._wait_visible(sent, missing)
        return missing

    async def _mark(self, events: Sequence[OutboxEvent]) -> set[int]:
        """Mark (or delete) the rows of sent events; the ids of rows not visible yet.

        The hot path is one statement and its row count. When it changed fewer rows
        than it was given, a second statement marks again and returns what it marked
        and the snapshot it ran in: `relay.wal._core.unseen_rows` tells the rows whose
        transaction is not visible yet from those settled otherwise.
        """
        delete = self._settings.on_sent is OnSent.DELETE
        array = id_array([event.id for event in events])
        async with self._conn_lock:
            conn = self._require_conn()
            name = "delete_sent" if delete else "mark_sent"
            cursor = await conn.execute(query("wal", name, self._names), {"ids": array})
            if cursor.rowcount >= len(events):
                return set()
            name = "delete_sent_seen" if delete else "mark_sent_seen"
            cursor = await conn.execute(query("wal", name, self._names), {"ids": array})
            row = await cursor.fetchone()
        assert row is not None  # noqa: S101 - one row, always
        xids = {event.id: self._xid_of(event) for event in events}
        return unseen_rows(xids, set(row[0]), Snapshot.parse(row[1]), xids.get)

    def _xid_of(self, event: OutboxEvent) -> int | None:
        """The xid of a streamed event's transaction (None for a swept row)."""
        if not event.lsn:
            return None
        if self._stale_tracker is not None and id(event) in self._stale:
            return self._stale_tracker.xid_of(event.lsn)
        return self._tracker.xid_of(event.lsn)

    async def _wait_visible(self, sent: Sequence[OutboxEvent], missing: set[int]) -> set[int]:
        """Retry the mark of rows it missed for a while; the ids still not visible.

        A transaction is decoded and streamed once its commit record is flushed, but
        other sessions see it only later (after a synchronous standby confirmed it, and
        for a short moment always): a mark then matches no row.
        """
        deadline = time.monotonic() + MARK_VISIBLE_WAIT_S
        while missing and time.monotonic() < deadline:
            await asyncio.sleep(MARK_RETRY_S)
            missing = await self._mark([event for event in sent if event.id in missing])
        return missing

    async def _retry_unmarked(self) -> None:
        """Mark the sent events whose rows were not visible; count those done."""
        tried = self._unmarked.to_retry()
        done = self._unmarked.settle(tried, await self._mark(tried))
        if not done:
            return
        log.info("sent events marked once visible", events=len(done))
        for lsn, count in self._settled_per_transaction(done).items():
            if lsn:
                self._tracker.done(lsn, count)

    def _settled_per_transaction(self, sent: Sequence[OutboxEvent]) -> collections.Counter[int]:
        """Sent events per commit LSN, leaving out stale copies from before a reconnect."""
        if self._stale:
            return collections.Counter(event.lsn for event in sent if self._counts(event))
        return collections.Counter(map(_lsn_of, sent))

    def _counts(self, event: OutboxEvent) -> bool:
        """Whether settling `event` counts in the current tracker (not a stale copy)."""
        return not self._stale or self._stale.pop(id(event), None) is None

    async def rewind(self) -> None:
        """Put every fetched, unsettled event back in front of the queue, in order."""
        unsettled = self._fetched.unsettled()
        self._fetched.clear()
        self._queue.extendleft(reversed(unsettled))
        if self._queue:
            self._has_events.set()

    def _recount_held(self) -> None:
        self._held_bytes = queued_size(self._queue) + queued_size(self._fetched.unsettled())

    async def backlog(self) -> Backlog:
        """Events decoded and not yet fetched; the slot's lag goes to the metrics."""
        oldest = self._queue[0].created_at if self._queue else None
        return Backlog(pending_events=len(self._queue), oldest_unsent_at=oldest)

    def connection_problems(self) -> Mapping[str, ConnectionProblem]:
        """The stream, main or sweep connection, when it broke and no reconnect worked yet."""
        return dict(self._down)

    def _went_down(self, name: str, error: str) -> None:
        """Record a connection lost (since the first time) or still failing (the latest error)."""
        since = self._down[name].since_s if name in self._down else time.monotonic()
        self._down[name] = ConnectionProblem(error, since)

    def _went_down_if_broken(self, **conns: psycopg.AsyncConnection[Any] | None) -> None:
        for name, conn in conns.items():
            if conn is not None and conn.broken:
                self._went_down(f"WAL {name}", "connection lost")

    # -- Connecting, the slot, the hand-over ----------------------------------------

    def _require_conn(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            raise DatabaseError("not connected to PostgreSQL")
        return self._conn

    async def _connect(self) -> None:
        settings = self._settings
        try:
            self._conn = await connection.connect(settings.conninfo, "wal")
            self._sweep_conn = await connection.connect(
                settings.conninfo, "wal sweep", session=SWEEP_SESSION
            )
        except DatabaseError:
            await self._disconnect()
            raise
        try:
            await check_and_prepare(self._conn, settings)
            status = await fetch_slot_status(self._conn, settings.slot_name)
            if status is not None:
                check_slot(status)
            self._replication = await ReplicationConnection.connect(settings.conninfo)
            await self._open_stream(status)
        except psycopg.Error as exc:
            await self._disconnect()
            raise DatabaseError(f"cannot start streaming: {first_line(exc)}") from None
        except RelayError:
            await self._disconnect()
            raise
        self._broken = None
        self._down.clear()
        self._reader = asyncio.create_task(self._read(), name="wal-reader")

    async def _open_stream(self, status: SlotStatus | None) -> None:
        settings = self._settings
        replication = self._replication
        assert replication is not None  # noqa: S101 - set by the caller
        assert self._conn is not None  # noqa: S101
        if status is not None and status.lost:
            if not self._track_rows:
                raise SlotLostError(
                    f"replication slot {settings.slot_name} lost WAL it needed and "
                    "--on-sent none keeps no record of what was sent: events may be missing; "
                    f"drop the slot (outbox-relay slot drop) to start over"
                )
            log.error(
                "replication slot lost: its WAL was removed; recreating it and "
                "publishing pending rows from the table",
                slot=settings.slot_name,
            )
            await self._conn.execute(
                query("wal", "drop_slot", {}), {"slot_name": settings.slot_name}
            )
            status = None
        if status is None:
            if self._had_slot:
                if not self._track_rows:
                    raise SlotLostError(
                        f"replication slot {settings.slot_name} disappeared and --on-sent none "
                        "keeps no record of what was sent: events may be missing"
                    )
                log.error(
                    "replication slot disappeared; recreating it and publishing pending "
                    "rows from the table",
                    slot=settings.slot_name,
                )
            created = await replication.create_slot(
                settings.slot_name, export_snapshot=self._track_rows
            )
            log.info(
                "replication slot created",
                slot=settings.slot_name,
                consistent_point=format_lsn(created.consistent_point),
            )
            if created.snapshot_name is not None:
                await self._sweep(created.snapshot_name)
            start_lsn = created.consistent_point
        else:
            if self._track_rows:
                await self._sweep(None)
            start_lsn = status.confirmed_flush_lsn or 0
        self._had_slot = True
        self._tracker = AckTracker(start_lsn)
        self._sent_confirmed = start_lsn
        await replication.start(
            settings.slot_name,
            settings.publication,
            start_lsn,
            messages=True,
        )
        log.info(
            "streaming the outbox from the WAL",
            slot=settings.slot_name,
            publication=settings.publication,
            start_lsn=format_lsn(start_lsn),
        )

    _had_slot = False

    async def _sweep(
        self,
        snapshot_name: str | None,
        *,
        front: bool = False,
        keys: frozenset[str] | None = None,
        ids: Iterable[int] = (),
    ) -> None:
        """Start queueing the pending rows visible in a snapshot (the slot's, or a new one).

        The rows are read in chunks as the loop consumes them, in one REPEATABLE READ
        transaction; the stream waits until the last chunk is queued, so every swept row
        goes before what the stream brings. With `front` (a release), only the rows of
        the released `keys` are read, and those keys' events still queued are merged
        into them in outbox order (`relay.wal._core.ReleaseMerge`); other keys' events
        keep their places. The stream goes on queueing until the hand-over exists: a
        released key's row it queued meanwhile that the snapshot saw is swept too, and
        only its queued copy goes.
        """
        conn = self._sweep_conn
        assert conn is not None  # noqa: S101 - connected by the caller
        outstanding = {event.id for event in self._queue if event.id}
        outstanding.update(event.id for event in self._fetched.unsettled() if event.id)
        await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        if snapshot_name is not None:
            await conn.execute(
                sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name))
            )
        parked = await self._read_parked(conn)
        # Every transaction this snapshot sees committed before this position: once the
        # stream is past it, no streamed row can be a swept one.
        cursor = await conn.execute(query("wal", "sweep_snapshot", {}))
        position = await cursor.fetchone()
        assert position is not None  # noqa: S101 - one row, always
        self._handovers.append(
            HandOver(Snapshot.parse(position[1]), parse_lsn(position[0]), keys=keys)
        )
        self._parked_ids, self._parked_keys = parked_state(parked)
        self._parked_checked_s = time.monotonic()
        state = self._sweep_state = _SweepState(
            outstanding, dict(self._parked_keys), keys=keys, ids=sorted(ids)
        )
        self._room.clear()
        if front:
            # From here on the stream queues nothing until the sweep ends (it waits while
            # a sweep runs): what is queued now is all the merge must know.
            state.merge, rest = ReleaseMerge.split(self._queue, keys or frozenset())
            self._queue.clear()
            self._queue.extend(rest)
        await self._sweep_chunk()
        if self._queue:
            self._has_events.set()

    async def _sweep_chunk(self) -> bool:
        """Queue the next chunk of the sweep; False (and the sweep ends) after the last."""
        conn = self._sweep_conn
        state = self._sweep_state
        assert conn is not None  # noqa: S101 - a sweep runs on an open connection
        assert state is not None  # noqa: S101
        limit = state.limit or min(SWEEP_FIRST_CHUNK, SWEEP_CHUNK)
        if state.keys is None:
            cursor = await conn.execute(
                query("wal", "pending_rows", self._names),
                {"after_id": state.after_id, "limit": limit},
            )
        else:
            cursor = await conn.execute(
                query("wal", "pending_rows_of_keys", self._names),
                {
                    "after_id": state.after_id,
                    "limit": limit,
                    "keys": sorted(state.keys),
                    "ids": id_array(state.ids),
                },
            )
        rows = await cursor.fetchall()
        unreadable = self._queue_swept(rows, state)
        if unreadable:
            try:
                await self._park_unreadable(unreadable)
            except ReplicationError as exc:
                raise DatabaseError(str(exc)) from None
        if rows:
            state.after_id = rows[-1][0]
        if len(rows) == limit:
            # payload text, payload bytes, headers text: what grows with the content.
            content = sum(
                len(row[4] or "") + len(row[5] or b"") + len(row[6] or "") for row in rows
            )
            state.limit = next_sweep_chunk(len(rows), content)
            return True
        await conn.execute("COMMIT")
        if state.merge is not None:
            self._queue.extend(state.merge.remaining())
            # Rare (an operator's release), and the merged events were out of the queue
            # for a while (a count zeroed meanwhile missed them): counted afresh.
            self._recount_held()
        self._sweep_state = None
        self._room.set()
        if state.swept:
            log.info("pending rows queued from the table", events=state.swept)
        return False

    def _queue_swept(
        self, rows: Sequence[Sequence[Any]], state: _SweepState
    ) -> list[UnreadableRow]:
        """Queue the events of swept rows; the rows that cannot become one."""
        # Only when some key is parked does a row need the waits_behind check.
        parked_keys = state.parked_keys if self._park_keys else None
        queue = self._queue
        merge = state.merge
        unreadable = []
        added: list[OutboxEvent] = []
        for row in rows:
            try:
                event = self._event_from_table(row)
            except UNREADABLE as exc:
                unreadable.append(unreadable_row(row[0], row[3], exc, row[2]))
                note_parked(state.parked_keys, row[3], row[0])  # its key's later rows wait
                continue
            if event.id in state.outstanding:
                continue
            if parked_keys and waits_behind(event.key, event.id, parked_keys):
                continue  # waits behind a parked event, pending in the table
            if merge is None:
                added.append(event)
            else:
                merged = merge.merge(event)
                queue.extend(merged)
                if merged[-1] is event:  # the others were queued, and counted, before
                    self._held_bytes += queued_size(merged[-1:])
            state.swept += 1
        if added:
            queue.extend(added)
            self._held_bytes += queued_size(added)
        return unreadable

    async def _continue_sweep(self) -> None:
        try:
            await self._sweep_chunk()
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot read pending events: {first_line(exc)}") from None
        if self._queue:
            self._has_events.set()

    async def _read_parked(self, conn: psycopg.AsyncConnection[Any]) -> dict[int, str | None]:
        cursor = await conn.execute(query("wal", "parked_rows", self._names))
        return {row[0]: row[1] for row in await cursor.fetchall()}

    async def _refresh_parked(self) -> None:
        """Re-read parked rows; when an operator released some, sweep their rows again."""
        conn = self._require_conn()
        try:
            parked = await self._read_parked(conn)
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot read parked events: {first_line(exc)}") from None
        self._parked_checked_s = time.monotonic()
        parked_ids, parked_keys = parked_state(parked)
        # A key is released when it holds nothing any more, and also when its first
        # parked row went (a later one stays parked): the rows between the two, and the
        # released row itself, are due now; the sweep's `waits_behind` keeps the rest.
        released_keys = frozenset(
            key for key, first in self._parked_keys.items() if parked_keys.get(key) != first
        )
        released_ids = self._parked_ids - parked_ids
        self._parked_ids, self._parked_keys = parked_ids, parked_keys
        if released_keys or released_ids:
            # Only the released keys' rows (and released rows without a key): every
            # later event of a released key waited in the table, so none is queued, and
            # rows of other keys are left to the stream, in its order.
            log.info(
                "parked events released; publishing their keys' pending rows",
                events=len(released_ids),
                keys=len(released_keys),
            )
            try:
                await self._sweep(None, front=True, keys=released_keys, ids=released_ids)
            except psycopg.Error as exc:
                raise DatabaseError(f"cannot read pending events: {first_line(exc)}") from None

    def _event_from_table(self, row: Sequence[Any]) -> OutboxEvent:
        (
            id_, event_id, topic, key, payload, payload_bytes, headers,
            event_type, aggregate_type, created_at, attempts,
        ) = row  # fmt: skip
        if payload is not None:
            value: bytes | None = compact_json(payload)
        else:
            value = bytes(payload_bytes) if payload_bytes is not None else None
        own = row_headers(headers) if headers and headers != "{}" else None
        return new_event(
            id_,
            event_id,
            route_topic(self._settings.topic_template, topic, event_type, aggregate_type),
            key,
            value,
            kafka_headers(event_id, event_type, aggregate_type, own),
            _fromisoformat(created_at) if created_at is not None else None,
            attempts,
            0,
        )

    async def _reconnect_shielded(self) -> None:
        """Reconnect in a task of its own that a cancelled fetch does not cut short.

        A fetch ahead is cancelled whenever an acknowledgement fails, which a reconnect
        (it closes the connections) causes: a reconnect cut short left the state half
        reset (an open sweep, the old tracker, a stream never started). The next fetch
        waits for the same task.
        """
        task = self._reconnecting
        if task is None:
            task = asyncio.create_task(self._reconnect(), name="wal-reconnect")
            task.add_done_callback(self._reconnect_ended)
            self._reconnecting = task
        await asyncio.shield(task)

    def _reconnect_ended(self, task: asyncio.Task[None]) -> None:
        self._reconnecting = None
        error = None if task.cancelled() else task.exception()
        if error is not None:
            # Retrieved here too: when no fetch waited for it, the next one retries.
            log.debug("reconnecting failed", error=first_line(error))
            for name in self._down or ("WAL stream",):
                self._went_down(name, first_line(error))

    async def _reconnect(self) -> None:
        if self._broken is not None:
            log.warning("replication stream broke; reconnecting", error=first_line(self._broken))
        async with self._conn_lock:
            await self._disconnect()
        # What the old stream delivered comes again: forget it, the table and the
        # slot say what is still due (the new sweep's snapshot sees every transaction
        # the old stream delivered: their rows are pending, and swept, or settled). With
        # --on-sent none the table says nothing (no sweep): the replay is the only copy
        # of the events queued and not yet fetched, so nothing is skipped (those settled
        # but not yet confirmed come twice).
        fetched = self._fetched
        self._stale = {}
        self._stale_tracker = self._tracker
        for event in fetched.events:
            if event.lsn and id(event) not in fetched.settled:
                self._stale[id(event)] = event
                retry = fetched.replaced.get(id(event))
                if retry is not None:
                    self._stale[id(retry)] = retry
        self._queue.clear()
        self._recount_held()  # the fetched events stay: the loop settles them still
        self._has_events.clear()
        self._room.set()
        self._handovers.clear()
        self._unmarked.clear()
        self._sweep_state = None
        self._decoder = self._new_decoder()
        self._decoder.handovers = self._handovers
        await self._connect()

    async def _disconnect(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        for name in ("_replication", "_conn", "_sweep_conn"):
            conn = getattr(self, name)
            setattr(self, name, None)
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    # -- The stream ---------------------------------------------------------------------

    async def _read(self) -> None:
        replication = self._replication
        assert replication is not None  # noqa: S101 - started by _connect
        decoder = self._decoder
        queue = self._queue
        frames: list[bytes] = []
        transactions: list[WalTransaction] = []
        try:
            while True:
                while self._sweep_state is not None or not queue_has_room(
                    len(queue), self._held_bytes
                ):
                    # Full, or the table's rows go first: the server waits meanwhile
                    # (the status task keeps answering it).
                    self._room.clear()
                    await self._room.wait()
                if not replication.read_frames(frames):
                    await replication.wait_readable(STATUS_INTERVAL_S)
                    continue
                decoder.feed(frames, transactions)
                frames.clear()
                if transactions:
                    self._accepting = True
                    try:
                        await self._accept(transactions)
                    finally:
                        self._accepting = False
                    transactions.clear()
                if decoder.truncated:
                    log.warning("the outbox table was truncated; its rows are gone")
                    decoder.truncated = 0
                if decoder.reply_requested:
                    self._send_status(force=True)
        except (ReplicationError, PgOutputError, WalSetupError) as exc:
            self._broken = exc
            self._went_down("WAL stream", first_line(exc))
            self._has_events.set()
            log.warning("replication stream stopped", error=first_line(exc))
        except Exception as exc:
            # Never a silent stall: the next fetch raises it and reconnects.
            self._broken = exc
            self._went_down("WAL stream", first_line(exc))
            self._has_events.set()
            log.exception("replication stream failed")

    async def _accept(self, transactions: list[WalTransaction]) -> None:
        """Queue the events of committed transactions and register them for confirming."""
        queue = self._queue
        tracker = self._tracker
        park_keys = self._park_keys and self._parked_keys
        for transaction in transactions:
            if transaction.rejected:
                await self._park_rejected(transaction.rejected)
            if transaction.unreadable:
                await self._park_unreadable(transaction.unreadable)
                park_keys = self._park_keys and self._parked_keys
            events = transaction.events
            swept: list[HandOver] = []
            if self._handovers:
                swept = [
                    h for h in self._handovers if h.swept(transaction.commit_lsn, transaction.xid)
                ]
                if any(h.expired for h in self._handovers):
                    self._handovers[:] = [h for h in self._handovers if not h.expired]
            if events and (swept or park_keys):
                events = await self._filter(transaction, swept)
            tracker.add(
                transaction.commit_lsn,
                transaction.end_lsn,
                len(events),
                transaction.commit_time_us,
                transaction.xid,
            )
            if events:
                queue.extend(events)
                self._held_bytes += queued_size(events)
        if queue:
            self._has_events.set()

    async def _filter(
        self, transaction: WalTransaction, swept: Sequence[HandOver]
    ) -> tuple[OutboxEvent, ...]:
        kept = []
        for event in transaction.events:
            if event.id and any(h.covers(event.key) for h in swept):
                continue  # pending when swept (so queued from the table), or settled
            if self._park_keys and waits_behind(event.key, event.id, self._parked_keys):
                # It waits behind the parked event. A row stays pending in the table
                # (the sweep after the release publishes it); a table-less event
                # becomes such a row.
                if not event.id:
                    await self._hold_message(event)
                continue
            kept.append(event)
        return tuple(kept)

    async def _hold_message(self, event: OutboxEvent) -> None:
        conn = self._require_conn()
        own = {name: value.decode(errors="replace") for name, value in event.headers[1:]}
        try:
            await conn.execute(
                query("wal", "hold_message", self._names),
                {
                    "event_id": event.event_id,
                    "topic": event.topic,
                    "key": event.key,
                    "value": event.value,
                    "headers": json.dumps(own),
                },
            )
        except psycopg.Error as exc:
            raise ReplicationError(f"cannot hold a table-less event: {first_line(exc)}") from None

    async def _park_unreadable(self, rows: Sequence[UnreadableRow]) -> None:
        """Park rows the relay cannot relay; their keys' later events wait behind them.

        Each row this parks counts in ``outbox_relay_events_parked`` under its topic,
        like an event the loop parks after failed attempts (a replayed row already
        parked does not count again).
        """
        conn = self._require_conn()
        for row in rows:
            log.error("unreadable outbox row parked", id=row.id, key=row.key, error=row.reason)
            try:
                cursor = await conn.execute(
                    query("wal", "park_row", self._names), {"id": row.id, "error": row.reason}
                )
            except psycopg.Error as exc:
                raise ReplicationError(f"cannot park a row: {first_line(exc)}") from None
            if cursor.rowcount and self._metrics is not None:
                self._metrics.events_parked.labels(topic=row.topic).inc()
            self._parked_ids.add(row.id)
            note_parked(self._parked_keys, row.key, row.id)

    async def _park_rejected(self, rejected: Sequence[RejectedMessage]) -> None:
        conn = self._require_conn()
        for message in rejected:
            log.error(
                "unreadable table-less event parked",
                lsn=format_lsn(message.lsn),
                event_id=message.event_id,
                error=message.reason,
            )
            try:
                await conn.execute(
                    query("wal", "park_message", self._names),
                    self._parking(
                        message.event_id,
                        INVALID_MESSAGE_TOPIC,
                        None,
                        message.content,
                        "{}",
                        message.reason,
                        0,
                    ),
                )
            except psycopg.Error as exc:
                raise ReplicationError(
                    f"cannot park a table-less event: {first_line(exc)}"
                ) from None

    def _parking(  # noqa: PLR0917 - the columns of one row
        self,
        event_id: str,
        topic: str,
        key: str | None,
        value: bytes | None,
        headers: str,
        error: str,
        attempts: int,
    ) -> dict[str, object]:
        """The parameters of ``park_message``: content over the payload limit shrunk."""
        value, note = parked_copy(value, self._settings.max_payload_bytes)
        return {
            "event_id": event_id,
            "topic": topic,
            "key": key,
            "value": value,
            "headers": headers,
            "error": error + note,
            "attempts": attempts,
        }

    async def _record_failure(
        self, conn: psycopg.AsyncConnection[Any], failed: FailedEvent
    ) -> None:
        event = failed.event
        error = failed.failure.error
        if event.id:
            await conn.execute(
                query("wal", "record_failure", self._names), {"id": event.id, "error": error}
            )
            if failed.park:
                await conn.execute(
                    query("wal", "park_row", self._names), {"id": event.id, "error": error}
                )
        elif failed.park:
            own = {name: value.decode(errors="replace") for name, value in event.headers[1:]}
            await conn.execute(
                query("wal", "park_message", self._names),
                self._parking(
                    event.event_id,
                    event.topic,
                    event.key,
                    event.value,
                    json.dumps(own),
                    error,
                    failed.attempts,
                ),
            )
        if failed.park:
            if event.id:
                self._parked_ids.add(event.id)
            # A table-less event's parked row has an id of its own, not known here.
            note_parked(self._parked_keys, event.key, event.id)

    # -- Confirming, heartbeats, lag ------------------------------------------------------

    def _send_status(self, *, force: bool = False) -> None:
        replication = self._replication
        if replication is None or not replication.streaming or self._broken is not None:
            return
        tracker = self._tracker
        confirmed = tracker.confirmable()
        decoder = self._decoder
        if not decoder.in_transaction and not self._accepting and tracker.idle and not self._queue:
            # Nothing of ours is open: the server's position is safe too, so the slot
            # follows the WAL even when only other tables are written.
            tracker.confirmable()
            tracker.idle_position(decoder.wal_end)
            confirmed = tracker.confirmed
        now = time.monotonic()
        if not force and (
            confirmed == self._sent_confirmed or now - self._last_status_s < STATUS_MIN_GAP_S
        ):
            return
        replication.send(
            encode_standby_status(
                max(decoder.wal_end, confirmed),
                confirmed,
                confirmed,
                now=dt.datetime.now(dt.UTC),
            )
        )
        self._last_status_s = now
        self._sent_confirmed = confirmed

    async def _status_loop(self) -> None:
        last_lag_s = 0.0
        last_log_s = time.monotonic()
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            if self._unmarked:
                try:
                    await self._retry_unmarked()
                except (psycopg.Error, DatabaseError) as exc:
                    log.debug("marking unmarked events failed", error=first_line(exc))
            with contextlib.suppress(ReplicationError):
                self._send_status(force=True)
            now = time.monotonic()
            if now - last_lag_s >= LAG_REFRESH_S:
                last_lag_s = now
                await self._observe_lag(log_it=now - last_log_s >= LAG_LOG_S)
                if now - last_log_s >= LAG_LOG_S:
                    last_log_s = now

    async def _observe_lag(self, *, log_it: bool) -> None:
        try:
            async with self._conn_lock:
                conn = self._conn
                if conn is None or conn.closed:
                    return
                status = await fetch_slot_status(conn, self._settings.slot_name)
        except psycopg.Error:
            return
        lag_s = 0.0
        oldest_us = self._tracker.oldest_commit_time_us()
        if oldest_us is not None:
            oldest = pg_timestamp_to_datetime(oldest_us)
            lag_s = max(0.0, (dt.datetime.now(dt.UTC) - oldest).total_seconds())
        if self._metrics is not None:
            self._metrics.wal_lag_seconds.set(lag_s)
            if status is not None and status.retained_bytes is not None:
                self._metrics.wal_retained_bytes.set(status.retained_bytes)
        if log_it and status is not None:
            log.info(
                "replication slot lag",
                slot=status.slot_name,
                retained_bytes=status.retained_bytes,
                unconfirmed_bytes=status.unconfirmed_bytes,
                lag_seconds=round(lag_s, 3),
                confirmed_flush_lsn=format_lsn(status.confirmed_flush_lsn or 0),
            )

    async def _heartbeat_loop(self) -> None:
        while self._heartbeat_ok:
            await asyncio.sleep(self._settings.heartbeat_interval)
            try:
                async with self._conn_lock:
                    conn = self._conn
                    if conn is None or conn.closed:
                        continue
                    await conn.execute(query("wal", "heartbeat", {}))
            except psycopg.errors.InsufficientPrivilege:
                log.warning("cannot write WAL heartbeats (pg_logical_emit_message not allowed)")
                self._heartbeat_ok = False
            except psycopg.Error as exc:
                log.debug("heartbeat failed", error=first_line(exc))


_lsn_of: Final = operator.attrgetter("lsn")


def message_topics(settings: Settings) -> frozenset[str]:
    """The topics of ``--message-topics`` (a comma-separated list)."""
    return frozenset(t.strip() for t in settings.message_topics.split(",") if t.strip())


def parked_state(parked: dict[int, str | None]) -> tuple[set[int], dict[str, int]]:
    """Parked row ids, and the keys they hold back with their first parked row's id."""
    keys: dict[str, int] = {}
    for row_id, key in parked.items():
        note_parked(keys, key, row_id)
    return set(parked), keys
