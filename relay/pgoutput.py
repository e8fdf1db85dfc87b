"""A pure decoder for the logical replication stream that pgoutput produces.

Two layers, both free of I/O so they can be tested with captured bytes:

* the CopyData framing of a ``replication=database`` connection: XLogData (``w``)
  and primary keepalive (``k``) frames in, standby status updates (``r``) out;
* the pgoutput messages inside XLogData: Begin, Commit, Relation, Insert, ...

Column values stay as the bytes the server sent (its text output, unless the
``binary`` option is on): converting them needs the column's type, which only the
Relation message knows, and most relays only look at a few columns anyway.
:func:`decode_text_value` converts the common types when a caller wants them.

This is the relay's hot path, so decoding works on one ``bytes`` object with
offsets and precompiled :class:`struct.Struct` formats: no slicing of headers,
no per-byte loops, one allocation per column value.

Reference: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
"""

from __future__ import annotations

import dataclasses
import enum
import re
import struct
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final, TypeAlias, TypeVar

from relay.errors import RelayError

if TYPE_CHECKING:
    from collections.abc import Callable


_T = TypeVar("_T")


class PgOutputError(RelayError, ValueError):
    """The replication stream holds bytes that are not a valid pgoutput message."""


# --- Values shared by both layers -----------------------------------------------------

#: Timestamps in the protocol count microseconds from the PostgreSQL epoch.
PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND: Final = timedelta(microseconds=1)


def pg_timestamp_to_datetime(microseconds: int) -> datetime:
    """Convert a protocol timestamp (microseconds since 2000-01-01 UTC) to a datetime."""
    return PG_EPOCH + timedelta(microseconds=microseconds)


def datetime_to_pg_timestamp(moment: datetime) -> int:
    """Convert an aware datetime to a protocol timestamp (microseconds since 2000-01-01 UTC)."""
    return (moment - PG_EPOCH) // _ONE_MICROSECOND


def format_lsn(lsn: int) -> str:
    """Format an LSN the way PostgreSQL prints ``pg_lsn`` values, e.g. ``0/1548AF8``."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """Parse a ``pg_lsn`` text value such as ``0/1548AF8`` into an integer."""
    # A pattern rather than int(..., 16) alone, which would also take "0x1", " 1" or "1_0".
    if _LSN_TEXT.fullmatch(text) is None:
        raise PgOutputError(f"invalid LSN {text!r}, expected e.g. '0/1548AF8'")
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


_LSN_TEXT: Final = re.compile(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}")


# Network byte order throughout. LSNs are unsigned, timestamps signed, as in the server.
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_U32_U8: Final = struct.Struct(">IB")
_U32_U32: Final = struct.Struct(">II")
_U32_I32: Final = struct.Struct(">Ii")
_U8_U16: Final = struct.Struct(">BH")
_U8_U64: Final = struct.Struct(">BQ")
_U64: Final = struct.Struct(">Q")
_U64_I64: Final = struct.Struct(">Qq")
_U64_I64_U32: Final = struct.Struct(">QqI")
_U8_U64_U64_I64: Final = struct.Struct(">BQQq")
_U32_U8_U64_U64_I64: Final = struct.Struct(">IBQQq")

# --- Layer 1: CopyData framing --------------------------------------------------------

_XLOGDATA_TAG: Final = ord("w")
_KEEPALIVE_TAG: Final = ord("k")
# Tag, dataStart, walEnd, sendTime; the pgoutput message follows.
_XLOGDATA_HEADER: Final = struct.Struct(">BQQq")
_XLOGDATA_HEADER_SIZE: Final = _XLOGDATA_HEADER.size
# Tag, walEnd, sendTime, replyRequested.
_KEEPALIVE: Final = struct.Struct(">BQqB")
# Tag, written, flushed, applied, clock, replyRequested.
_STANDBY_STATUS: Final = struct.Struct(">cQQQqB")


@dataclass(frozen=True, slots=True)
class XLogData:
    """A ``w`` frame: one pgoutput message and where it sits in the WAL."""

    #: The WAL position of the start of the data (0 for messages with no position).
    data_start: int
    #: The server's current end of WAL.
    wal_end: int
    #: The server's clock when it sent the frame, in microseconds since 2000-01-01 UTC.
    send_time_us: int
    message: PgOutputMessage


@dataclass(frozen=True, slots=True)
class PrimaryKeepalive:
    """A ``k`` frame: the server's heartbeat, possibly asking for a status update now."""

    #: The server's current end of WAL.
    wal_end: int
    #: The server's clock when it sent the frame, in microseconds since 2000-01-01 UTC.
    send_time_us: int
    #: The server disconnects after ``wal_sender_timeout`` unless we answer soon.
    reply_requested: bool


def _as_bytes(buf: bytes | bytearray | memoryview) -> bytes:
    # psycopg hands out memoryviews. One copy of the frame up front is cheaper than
    # turning every memoryview slice into bytes later, and bytes slices are the values.
    return buf if type(buf) is bytes else bytes(buf)


def decode_xlogdata(
    buf: bytes | bytearray | memoryview, *, in_stream: bool = False
) -> tuple[int, int, PgOutputMessage]:
    """Decode an XLogData frame into ``(data_start, wal_end, message)``.

    The fast path for the relay loop: it skips building an :class:`XLogData`. Pass
    ``in_stream=True`` between a :class:`StreamStart` and a :class:`StreamStop`, where
    protocol version 2 prefixes data messages with a transaction id.

    Raises:
        PgOutputError: the frame is not XLogData or its message is malformed.

    """
    # Inlined _as_bytes: a call costs as much as the copy on this path.
    data = buf if type(buf) is bytes else bytes(buf)
    try:
        tag, data_start, wal_end, _send_time = _XLOGDATA_HEADER.unpack_from(data)
    except struct.error:
        raise PgOutputError(f"truncated XLogData frame of {len(data)} bytes") from None
    if tag != _XLOGDATA_TAG:
        raise PgOutputError(f"expected an XLogData ('w') frame, got tag {tag:#04x}")
    return data_start, wal_end, _decode_message(data, _XLOGDATA_HEADER_SIZE, in_stream)


def decode_keepalive(buf: bytes | bytearray | memoryview) -> PrimaryKeepalive:
    """Decode a primary keepalive (``k``) frame.

    Raises:
        PgOutputError: the frame is not a keepalive or has the wrong length.

    """
    if len(buf) != _KEEPALIVE.size:
        raise PgOutputError(f"keepalive frame must be {_KEEPALIVE.size} bytes, got {len(buf)}")
    tag, wal_end, send_time_us, reply = _KEEPALIVE.unpack_from(buf)
    if tag != _KEEPALIVE_TAG:
        raise PgOutputError(f"expected a keepalive ('k') frame, got tag {tag:#04x}")
    return PrimaryKeepalive(wal_end, send_time_us, reply_requested=reply != 0)


def decode_copy_data(
    buf: bytes | bytearray | memoryview, *, in_stream: bool = False
) -> XLogData | PrimaryKeepalive:
    """Decode one CopyData payload received on a replication connection.

    See :func:`decode_xlogdata` for ``in_stream``.

    Raises:
        PgOutputError: the frame is neither XLogData nor a keepalive, or is malformed.

    """
    data = _as_bytes(buf)
    if not data:
        raise PgOutputError("empty CopyData frame")
    tag = data[0]
    if tag == _KEEPALIVE_TAG:
        return decode_keepalive(data)
    if tag != _XLOGDATA_TAG:
        raise PgOutputError(f"unknown replication frame tag {tag:#04x}")
    try:
        _tag, data_start, wal_end, send_time_us = _XLOGDATA_HEADER.unpack_from(data)
    except struct.error:
        raise PgOutputError(f"truncated XLogData frame of {len(data)} bytes") from None
    message = _decode_message(data, _XLOGDATA_HEADER_SIZE, in_stream)
    return XLogData(data_start, wal_end, send_time_us, message)


def encode_standby_status(
    written_lsn: int,
    flushed_lsn: int,
    applied_lsn: int,
    *,
    now: datetime,
    reply_requested: bool = False,
) -> bytes:
    """Build a standby status update (``r``) to send with ``put_copy_data``.

    ``flushed_lsn`` is what the server may forget: it becomes the slot's
    ``confirmed_flush_lsn``. ``now`` is an aware datetime, passed in so this stays pure.
    """
    return _STANDBY_STATUS.pack(
        b"r",
        written_lsn,
        flushed_lsn,
        applied_lsn,
        datetime_to_pg_timestamp(now),
        1 if reply_requested else 0,
    )


# --- Layer 2: pgoutput messages -------------------------------------------------------


class Unchanged(enum.Enum):
    """Marks a TOASTed column an Update or Delete did not resend (kind ``u``)."""

    TOAST = "u"


#: The value of a column the server did not resend because it was unchanged and TOASTed.
UNCHANGED_TOAST: Final = Unchanged.TOAST


@dataclass(frozen=True, slots=True)
class BinaryValue:
    """A column value in the type's binary send format (kind ``b``, option ``binary``)."""

    data: bytes


#: One column value: the text output as bytes, SQL NULL as None, or one of the markers.
ColumnValue: TypeAlias = bytes | BinaryValue | Unchanged | None
#: The columns of a row, in the order of the Relation's columns.
Row: TypeAlias = tuple[ColumnValue, ...]


class ReplicaIdentity(enum.Enum):
    """A table's replica identity, valued as ``pg_class.relreplident``."""

    DEFAULT = "d"
    NOTHING = "n"
    FULL = "f"
    INDEX = "i"


@dataclass(frozen=True, slots=True)
class Begin:
    """The start of a committed transaction; its changes follow."""

    #: The LSN of the transaction's commit record.
    final_lsn: int
    #: Commit time in microseconds since 2000-01-01 UTC, see :attr:`commit_time`.
    commit_time_us: int
    xid: int

    @property
    def commit_time(self) -> datetime:
        """The commit time as an aware datetime."""
        return pg_timestamp_to_datetime(self.commit_time_us)


@dataclass(frozen=True, slots=True)
class Commit:
    """The end of a transaction; ``end_lsn`` is the position to confirm once it is safe."""

    flags: int
    #: The LSN of the commit record.
    commit_lsn: int
    #: The end of the commit record: where decoding resumes after this transaction.
    end_lsn: int
    commit_time_us: int

    @property
    def commit_time(self) -> datetime:
        """The commit time as an aware datetime."""
        return pg_timestamp_to_datetime(self.commit_time_us)


@dataclass(frozen=True, slots=True)
class Origin:
    """The replication origin the current transaction was replayed from."""

    #: The commit LSN on the origin server.
    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a :class:`Relation`."""

    name: str
    type_oid: int
    #: ``atttypmod``: e.g. the length limit of a varchar, -1 when there is none.
    type_modifier: int
    #: Whether the column is part of the replica identity key.
    is_key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    """The shape of a table; sent before its first change and after every ALTER."""

    #: Only set inside a streamed transaction (protocol version 2).
    xid: int | None
    #: The table's oid: data messages refer to the relation by it.
    relation_id: int
    namespace: str
    name: str
    replica_identity: ReplicaIdentity
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """The name of a user-defined type (``Y``), sent before a Relation that uses it."""

    xid: int | None
    type_oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    """A row inserted into the relation ``relation_id``."""

    xid: int | None
    relation_id: int
    new: Row


@dataclass(frozen=True, slots=True)
class Update:
    """A row updated in the relation ``relation_id``.

    At most one of ``key`` and ``old`` is set: ``key`` holds only the replica identity
    columns (the others are None) and comes when the key changed; ``old`` holds the
    whole old row and comes with ``REPLICA IDENTITY FULL``.
    """

    xid: int | None
    relation_id: int
    key: Row | None
    old: Row | None
    new: Row


@dataclass(frozen=True, slots=True)
class Delete:
    """A row deleted from the relation ``relation_id``; ``key`` or ``old`` as for Update."""

    xid: int | None
    relation_id: int
    key: Row | None
    old: Row | None


@dataclass(frozen=True, slots=True)
class Truncate:
    """One TRUNCATE statement over one or more relations."""

    xid: int | None
    relation_ids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """A message written with ``pg_logical_emit_message`` (needs option ``messages``)."""

    xid: int | None
    #: Whether it was part of a transaction (between Begin and Commit) or sent at once.
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


@dataclass(frozen=True, slots=True)
class StreamStart:
    """A block of an in-progress transaction begins (option ``streaming``)."""

    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStop:
    """The current block of an in-progress transaction ends."""


@dataclass(frozen=True, slots=True)
class StreamCommit:
    """A streamed transaction committed."""

    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time_us: int


@dataclass(frozen=True, slots=True)
class StreamAbort:
    """A streamed transaction, or one of its subtransactions, aborted."""

    xid: int
    subxid: int
    #: Only sent by protocol version 4 with parallel apply.
    abort_lsn: int | None
    abort_time_us: int | None


def _fast_new(cls: type[_T]) -> Callable[..., _T]:
    """Return a builder of ``cls`` instances taking the fields positionally, in order.

    A frozen dataclass's ``__init__`` sets every field through ``object.__setattr__``,
    which for Begin, Insert and Commit costs more than decoding them. Writing the slots
    through their descriptors builds the very same frozen object in about 60% of the time.
    """
    new = object.__new__
    setters = tuple(vars(cls)[field.name].__set__ for field in dataclasses.fields(cls))  # type: ignore[arg-type]
    if len(setters) == 3:  # noqa: PLR2004 - unrolled by hand: a loop would eat the gain
        set_0, set_1, set_2 = setters

        def build_3(value_0: object, value_1: object, value_2: object) -> _T:
            instance = new(cls)
            set_0(instance, value_0)
            set_1(instance, value_1)
            set_2(instance, value_2)
            return instance

        return build_3
    set_0, set_1, set_2, set_3 = setters

    def build_4(value_0: object, value_1: object, value_2: object, value_3: object) -> _T:
        instance = new(cls)
        set_0(instance, value_0)
        set_1(instance, value_1)
        set_2(instance, value_2)
        set_3(instance, value_3)
        return instance

    return build_4


_new_begin: Final = _fast_new(Begin)
_new_commit: Final = _fast_new(Commit)
_new_insert: Final = _fast_new(Insert)
_BEGIN_SIZE: Final = 20  # final LSN, commit time, xid
_COMMIT_SIZE: Final = 25  # flags, commit LSN, end LSN, commit time


PgOutputMessage: TypeAlias = (
    Begin
    | Commit
    | Origin
    | Relation
    | TypeInfo
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
)


def decode_message(
    buf: bytes | bytearray | memoryview, offset: int = 0, *, in_stream: bool = False
) -> PgOutputMessage:
    """Decode one pgoutput message starting at ``offset`` and running to the end of ``buf``.

    Use it for ``pg_logical_slot_peek_binary_changes`` output; replication frames go
    through :func:`decode_xlogdata`. See there for ``in_stream``.

    Raises:
        PgOutputError: the message is unknown, truncated or has trailing bytes.

    """
    return _decode_message(_as_bytes(buf), offset, in_stream)


_NULL: Final = ord("n")
_TEXT: Final = ord("t")
_BINARY: Final = ord("b")
_UNCHANGED_TOAST: Final = ord("u")
_NEW_TUPLE: Final = ord("N")
_KEY_TUPLE: Final = ord("K")
_OLD_TUPLE: Final = ord("O")
_TRANSACTIONAL: Final = 1
_KEY_COLUMN: Final = 1
_TRUNCATE_CASCADE: Final = 1
_TRUNCATE_RESTART_IDENTITY: Final = 2

_Decoder: TypeAlias = "Callable[[bytes, int, int | None], PgOutputMessage]"


def _decode_message(buf: bytes, offset: int, in_stream: bool) -> PgOutputMessage:  # noqa: FBT001 - private, positional for speed
    try:
        tag = buf[offset]
    except IndexError:
        raise PgOutputError("empty pgoutput message") from None
    decoder = _DECODERS.get(tag)
    if decoder is None:
        raise PgOutputError(_unknown_tag_message(tag))
    pos = offset + 1
    xid = None
    try:
        if in_stream and tag in _XID_PREFIXED:
            (xid,) = _U32.unpack_from(buf, pos)
            pos += 4
        return decoder(buf, pos, xid)
    except (struct.error, IndexError):
        # Reading past the end is how a truncated message shows up; naming the
        # message beats a bare struct.error deep in the relay loop.
        raise PgOutputError(f"truncated pgoutput {chr(tag)!r} message") from None


def _unknown_tag_message(tag: int) -> str:
    if chr(tag) in "bPKrp":
        return (
            f"pgoutput message {chr(tag)!r} is two-phase commit (protocol version 3), "
            "which the relay does not enable"
        )
    return f"unknown pgoutput message type {tag:#04x}"


def _check_end(buf: bytes, pos: int, tag: str) -> None:
    if pos != len(buf):
        raise _end_error(buf, pos, tag)


def _end_error(buf: bytes, pos: int, tag: str) -> PgOutputError:
    if pos > len(buf):
        return PgOutputError(f"truncated pgoutput {tag!r} message")
    return PgOutputError(f"{len(buf) - pos} unexpected bytes after pgoutput {tag!r} message")


def _read_string(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.find(0, pos)
    if end < 0:
        raise PgOutputError("unterminated string in pgoutput message")
    try:
        return buf[pos:end].decode(), end + 1
    except UnicodeDecodeError:
        raise PgOutputError("pgoutput string is not valid UTF-8") from None


def _read_tuple(buf: bytes, pos: int) -> tuple[Row, int]:
    # The hot loop: every column of every row goes through it, so it is written for
    # CPython. NULLs cost only a step, being the list's initial value. Lengths are read
    # as unsigned, so a corrupt negative length pushes `pos` past the end, which the
    # callers' end check (or the next read) reports: no extra test per column.
    (ncols,) = _U16.unpack_from(buf, pos)
    pos += 2
    values: list[ColumnValue] = [None] * ncols
    unpack_length = _U32.unpack_from
    for index in range(ncols):
        kind = buf[pos]
        if kind == _TEXT:
            (length,) = unpack_length(buf, pos + 1)
            pos += 5
            end = pos + length
            values[index] = buf[pos:end]
            pos = end
        elif kind == _NULL:
            pos += 1
        elif kind == _UNCHANGED_TOAST:
            values[index] = UNCHANGED_TOAST
            pos += 1
        elif kind == _BINARY:
            (length,) = unpack_length(buf, pos + 1)
            pos += 5
            end = pos + length
            values[index] = BinaryValue(buf[pos:end])
            pos = end
        else:
            raise PgOutputError(f"unknown column kind {kind:#04x} in pgoutput tuple data")
    return tuple(values), pos


# Begin, Insert and Commit come with every event, so their decoders check the length
# inline rather than through _check_end, and build the message with _fast_new.


def _decode_begin(buf: bytes, pos: int, _xid: int | None) -> Begin:
    if pos + _BEGIN_SIZE != len(buf):
        raise _end_error(buf, pos + _BEGIN_SIZE, "B")
    return _new_begin(*_U64_I64_U32.unpack_from(buf, pos))


def _decode_commit(buf: bytes, pos: int, _xid: int | None) -> Commit:
    if pos + _COMMIT_SIZE != len(buf):
        raise _end_error(buf, pos + _COMMIT_SIZE, "C")
    return _new_commit(*_U8_U64_U64_I64.unpack_from(buf, pos))


def _decode_origin(buf: bytes, pos: int, _xid: int | None) -> Origin:
    (commit_lsn,) = _U64.unpack_from(buf, pos)
    name, pos = _read_string(buf, pos + 8)
    _check_end(buf, pos, "O")
    return Origin(commit_lsn, name)


def _decode_relation(buf: bytes, pos: int, xid: int | None) -> Relation:
    (relation_id,) = _U32.unpack_from(buf, pos)
    namespace, pos = _read_string(buf, pos + 4)
    name, pos = _read_string(buf, pos)
    identity, ncols = _U8_U16.unpack_from(buf, pos)
    pos += 3
    columns = []
    for _ in range(ncols):
        flags = buf[pos]
        column_name, pos = _read_string(buf, pos + 1)
        type_oid, type_modifier = _U32_I32.unpack_from(buf, pos)
        pos += 8
        columns.append(
            Column(column_name, type_oid, type_modifier, is_key=bool(flags & _KEY_COLUMN))
        )
    _check_end(buf, pos, "R")
    try:
        replica_identity = ReplicaIdentity(chr(identity))
    except ValueError:
        raise PgOutputError(f"unknown replica identity {identity:#04x} for {name!r}") from None
    return Relation(xid, relation_id, namespace, name, replica_identity, tuple(columns))


def _decode_type(buf: bytes, pos: int, xid: int | None) -> TypeInfo:
    (type_oid,) = _U32.unpack_from(buf, pos)
    namespace, pos = _read_string(buf, pos + 4)
    name, pos = _read_string(buf, pos)
    _check_end(buf, pos, "Y")
    return TypeInfo(xid, type_oid, namespace, name)


def _decode_insert(buf: bytes, pos: int, xid: int | None) -> Insert:
    relation_id, marker = _U32_U8.unpack_from(buf, pos)
    if marker != _NEW_TUPLE:
        raise PgOutputError(f"expected 'N' in pgoutput insert, got {marker:#04x}")
    new, pos = _read_tuple(buf, pos + 5)
    if pos != len(buf):
        raise _end_error(buf, pos, "I")
    return _new_insert(xid, relation_id, new)


def _decode_update(buf: bytes, pos: int, xid: int | None) -> Update:
    relation_id, marker = _U32_U8.unpack_from(buf, pos)
    pos += 5
    key = old = None
    if marker == _KEY_TUPLE:
        key, pos = _read_tuple(buf, pos)
        marker = buf[pos]
        pos += 1
    elif marker == _OLD_TUPLE:
        old, pos = _read_tuple(buf, pos)
        marker = buf[pos]
        pos += 1
    if marker != _NEW_TUPLE:
        raise PgOutputError(f"expected 'N' in pgoutput update, got {marker:#04x}")
    new, pos = _read_tuple(buf, pos)
    _check_end(buf, pos, "U")
    return Update(xid, relation_id, key, old, new)


def _decode_delete(buf: bytes, pos: int, xid: int | None) -> Delete:
    relation_id, marker = _U32_U8.unpack_from(buf, pos)
    row, pos = _read_tuple(buf, pos + 5)
    _check_end(buf, pos, "D")
    if marker == _KEY_TUPLE:
        return Delete(xid, relation_id, key=row, old=None)
    if marker == _OLD_TUPLE:
        return Delete(xid, relation_id, key=None, old=row)
    raise PgOutputError(f"expected 'K' or 'O' in pgoutput delete, got {marker:#04x}")


def _decode_truncate(buf: bytes, pos: int, xid: int | None) -> Truncate:
    nrels, options = _U32_U8.unpack_from(buf, pos)
    pos += 5
    relation_ids = struct.unpack_from(f">{nrels}I", buf, pos)
    _check_end(buf, pos + 4 * nrels, "T")
    return Truncate(
        xid,
        relation_ids,
        cascade=bool(options & _TRUNCATE_CASCADE),
        restart_identity=bool(options & _TRUNCATE_RESTART_IDENTITY),
    )


def _decode_logical_message(buf: bytes, pos: int, xid: int | None) -> LogicalMessage:
    flags, lsn = _U8_U64.unpack_from(buf, pos)
    prefix, pos = _read_string(buf, pos + 9)
    (length,) = _U32.unpack_from(buf, pos)
    pos += 4
    content = buf[pos : pos + length]
    _check_end(buf, pos + length, "M")
    return LogicalMessage(xid, bool(flags & _TRANSACTIONAL), lsn, prefix, content)


def _decode_stream_start(buf: bytes, pos: int, _xid: int | None) -> StreamStart:
    xid, first_segment = _U32_U8.unpack_from(buf, pos)
    _check_end(buf, pos + 5, "S")
    return StreamStart(xid, first_segment=first_segment == 1)


def _decode_stream_stop(buf: bytes, pos: int, _xid: int | None) -> StreamStop:
    _check_end(buf, pos, "E")
    return StreamStop()


def _decode_stream_commit(buf: bytes, pos: int, _xid: int | None) -> StreamCommit:
    values = _U32_U8_U64_U64_I64.unpack_from(buf, pos)
    _check_end(buf, pos + _U32_U8_U64_U64_I64.size, "c")
    return StreamCommit(*values)


def _decode_stream_abort(buf: bytes, pos: int, _xid: int | None) -> StreamAbort:
    xid, subxid = _U32_U32.unpack_from(buf, pos)
    pos += 8
    if pos == len(buf):
        return StreamAbort(xid, subxid, abort_lsn=None, abort_time_us=None)
    abort_lsn, abort_time_us = _U64_I64.unpack_from(buf, pos)
    _check_end(buf, pos + 16, "A")
    return StreamAbort(xid, subxid, abort_lsn, abort_time_us)


_DECODERS: Final[dict[int, _Decoder]] = {
    ord("B"): _decode_begin,
    ord("C"): _decode_commit,
    ord("O"): _decode_origin,
    ord("R"): _decode_relation,
    ord("Y"): _decode_type,
    ord("I"): _decode_insert,
    ord("U"): _decode_update,
    ord("D"): _decode_delete,
    ord("T"): _decode_truncate,
    ord("M"): _decode_logical_message,
    ord("S"): _decode_stream_start,
    ord("E"): _decode_stream_stop,
    ord("c"): _decode_stream_commit,
    ord("A"): _decode_stream_abort,
}
#: Messages that carry the transaction id first when sent inside a stream block.
_XID_PREFIXED: Final = frozenset(map(ord, "RYIUDTM"))


# --- Converting text-format values ----------------------------------------------------

BOOL_OID: Final = 16
BYTEA_OID: Final = 17
INT8_OID: Final = 20
INT2_OID: Final = 21
INT4_OID: Final = 23
TEXT_OID: Final = 25
JSON_OID: Final = 114
BPCHAR_OID: Final = 1042
VARCHAR_OID: Final = 1043
TIMESTAMP_OID: Final = 1114
TIMESTAMPTZ_OID: Final = 1184
UUID_OID: Final = 2950
JSONB_OID: Final = 3802

#: What :func:`decode_text_value` returns.
TextValue: TypeAlias = int | str | bool | bytes | uuid.UUID | datetime


def _text_to_bool(value: bytes) -> bool:
    if value == b"t":
        return True
    if value == b"f":
        return False
    raise ValueError(value)


def _text_to_bytea(value: bytes) -> bytes:
    # Only the hex format (the default bytea_output since 9.0): the escape format
    # would need a parser of its own for a setting nobody should use any more.
    if not value.startswith(b"\\x"):
        raise ValueError("bytea is not in hex format; set bytea_output = 'hex'")
    return bytes.fromhex(value[2:].decode("ascii"))


def _text_to_datetime(value: bytes) -> datetime:
    # The walsender prints timestamps with its DateStyle; ISO (the default) is what
    # fromisoformat reads, and it is fast. 'infinity' and BC dates have no datetime.
    return datetime.fromisoformat(value.decode("ascii"))


def _text_to_uuid(value: bytes) -> uuid.UUID:
    return uuid.UUID(value.decode("ascii"))


def _text_to_str(value: bytes) -> str:
    return value.decode()


def _keep_bytes(value: bytes) -> bytes:
    # JSON stays raw: the relay forwards it as the Kafka payload without a round trip.
    return value


_TEXT_CONVERTERS: Final[dict[int, Callable[[bytes], TextValue]]] = {
    BOOL_OID: _text_to_bool,
    BYTEA_OID: _text_to_bytea,
    INT8_OID: int,
    INT2_OID: int,
    INT4_OID: int,
    TEXT_OID: _text_to_str,
    JSON_OID: _keep_bytes,
    BPCHAR_OID: _text_to_str,
    VARCHAR_OID: _text_to_str,
    TIMESTAMP_OID: _text_to_datetime,
    TIMESTAMPTZ_OID: _text_to_datetime,
    UUID_OID: _text_to_uuid,
    JSONB_OID: _keep_bytes,
}


def decode_text_value(type_oid: int, value: bytes) -> TextValue:
    """Convert a column value in text format to Python, by the column's type oid.

    int2/int4/int8 give int; text, varchar and bpchar give str; uuid gives UUID;
    bool gives bool; bytea (hex format) gives bytes; timestamptz gives an aware
    datetime and timestamp a naive one; json and jsonb stay as their raw bytes.
    Values of other types are returned unchanged.

    Raises:
        PgOutputError: the value is not valid text output for its type.

    """
    converter = _TEXT_CONVERTERS.get(type_oid)
    if converter is None:
        return value
    try:
        return converter(value)
    except ValueError:
        raise PgOutputError(
            f"cannot convert {value[:40]!r} as a value of type oid {type_oid}"
        ) from None


def decode_row(relation: Relation, row: Row) -> dict[str, TextValue | ColumnValue]:
    """Map a row's values to its relation's column names, converting text values.

    None, :data:`UNCHANGED_TOAST` and :class:`BinaryValue` values are kept as they are.

    Raises:
        PgOutputError: the row does not match the relation or a value does not convert.

    """
    if len(row) != len(relation.columns):
        raise PgOutputError(
            f"row has {len(row)} columns but relation {relation.name!r} "
            f"has {len(relation.columns)}; was a Relation message missed?"
        )
    return {
        column.name: decode_text_value(column.type_oid, value)
        if isinstance(value, bytes)
        else value
        for column, value in zip(relation.columns, row, strict=True)
    }
