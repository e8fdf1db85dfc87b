"""The pgoutput decoder WAL mode runs, pure and free of I/O so it is tested on captured bytes.

Two layers:

* the CopyData framing of a ``replication=database`` connection: XLogData (``w``) and
  primary keepalive (``k``) frames in, standby status updates (``r``) out;
* the pgoutput messages inside XLogData that the relay reads (protocol version 1, text
  values): Begin, Commit and the outbox's Inserts on the hot path, read in place by
  `relay.wal.StreamDecoder` with the formats below and `read_insert_columns`; Relation
  and logical Message, rare, through `decode_message`. The other messages (Update,
  Delete, Truncate, Origin, Type) carry nothing to publish: the stream reads their tag
  and skips them.

This is the relay's hot path, so decoding works on one ``bytes`` frame with offsets and
precompiled `struct.Struct` formats: no slicing of headers, no per-byte loops, one
allocation per column value read.

Reference: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final, TypeAlias

from relay.errors import RelayError

if TYPE_CHECKING:
    from collections.abc import Callable


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
_U32: Final = struct.Struct(">I")
_U8_U16: Final = struct.Struct(">BH")
_U8_U64: Final = struct.Struct(">BQ")
_U32_I32: Final = struct.Struct(">Ii")

# --- Layer 1: CopyData framing --------------------------------------------------------

XLOGDATA_TAG: Final = ord("w")
KEEPALIVE_TAG: Final = ord("k")
#: Tag, dataStart, walEnd, sendTime: the pgoutput message starts after these bytes.
XLOGDATA_HEADER_SIZE: Final = 25
# Tag, walEnd, sendTime, replyRequested.
_KEEPALIVE: Final = struct.Struct(">BQqB")
# Tag, written, flushed, applied, clock, replyRequested.
_STANDBY_STATUS: Final = struct.Struct(">cQQQqB")


@dataclass(frozen=True, slots=True)
class PrimaryKeepalive:
    """A ``k`` frame: the server's heartbeat, possibly asking for a status update now."""

    #: The server's current end of WAL.
    wal_end: int
    #: The server's clock when it sent the frame, in microseconds since 2000-01-01 UTC.
    send_time_us: int
    #: The server disconnects after ``wal_sender_timeout`` unless we answer soon.
    reply_requested: bool


def decode_keepalive(buf: bytes | bytearray | memoryview) -> PrimaryKeepalive:
    """Decode a primary keepalive (``k``) frame.

    Raises:
        PgOutputError: the frame is not a keepalive or has the wrong length.

    """
    if len(buf) != _KEEPALIVE.size:
        raise PgOutputError(f"keepalive frame must be {_KEEPALIVE.size} bytes, got {len(buf)}")
    tag, wal_end, send_time_us, reply = _KEEPALIVE.unpack_from(buf)
    if tag != KEEPALIVE_TAG:
        raise PgOutputError(f"expected a keepalive ('k') frame, got tag {tag:#04x}")
    return PrimaryKeepalive(wal_end, send_time_us, reply_requested=reply != 0)


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

BEGIN_TAG: Final = ord("B")
COMMIT_TAG: Final = ord("C")
INSERT_TAG: Final = ord("I")
RELATION_TAG: Final = ord("R")
MESSAGE_TAG: Final = ord("M")
TRUNCATE_TAG: Final = ord("T")
#: A Begin after its tag: the final (commit) LSN, the commit time in microseconds since
#: 2000-01-01 UTC, the xid.
BEGIN_BODY: Final = struct.Struct(">QqI")
#: A Commit after its tag: flags, the commit LSN, the end LSN (what the slot confirms
#: once the transaction is done), the commit time.
COMMIT_BODY: Final = struct.Struct(">BQQq")
#: The relation id that follows an Insert's tag: which table the row belongs to.
RELATION_ID: Final = struct.Struct(">I")

_INSERT_HEAD: Final = struct.Struct(">IBH")  # relation id, 'N', number of columns
_INSERT_COLUMNS_AT: Final = XLOGDATA_HEADER_SIZE + 1 + _INSERT_HEAD.size
_NEW_TUPLE: Final = ord("N")
_TEXT_VALUE: Final = ord("t")
_NULL_VALUE: Final = ord("n")


def read_insert_columns(frame: bytes, count: int) -> list[bytes | None]:
    """The first `count` column values of an XLogData frame holding a pgoutput Insert.

    Each value is the column's text output as bytes, or None for NULL. The outbox's hot
    path: the columns the relay does not read come last in the table (sent_at,
    last_error, ...), so they are not even sliced. Inserts carry text values or NULLs
    only (no unchanged-TOAST marker; binary values need an option the relay does not
    set). A row of fewer columns is padded with None.

    Raises:
        PgOutputError: the frame is not an insert of a new tuple, or is truncated.

    """
    try:
        _relation_id, marker, ncols = _INSERT_HEAD.unpack_from(frame, XLOGDATA_HEADER_SIZE + 1)
        if marker != _NEW_TUPLE:
            raise PgOutputError(f"expected 'N' in pgoutput insert, got {marker:#04x}")
        values: list[bytes | None] = []
        append = values.append
        unpack_length = _U32.unpack_from
        pos = _INSERT_COLUMNS_AT
        for _ in range(min(count, ncols)):
            kind = frame[pos]
            if kind == _TEXT_VALUE:
                end = pos + 5 + unpack_length(frame, pos + 1)[0]
                append(frame[pos + 5 : end])
                pos = end
            elif kind == _NULL_VALUE:
                append(None)
                pos += 1
            else:
                raise PgOutputError(f"unexpected column kind {kind:#04x} in an outbox insert")
    except (struct.error, IndexError):
        raise PgOutputError("truncated pgoutput insert") from None
    if pos > len(frame):
        raise PgOutputError("truncated pgoutput insert")
    if len(values) < count:
        values.extend([None] * (count - len(values)))
    return values


def bytea_from_text(value: object) -> bytes | None:
    """The bytes of a ``bytea`` column's text output (hex format); None for NULL.

    Only the hex format (the default ``bytea_output`` since 9.0): the escape format
    would need a parser of its own for a setting nobody should use any more.

    Raises:
        PgOutputError: the value is not in hex format.
        ValueError: the hex digits are malformed.

    """
    if not isinstance(value, bytes):
        return None
    if not value.startswith(b"\\x"):
        raise PgOutputError("bytea is not in hex format; set bytea_output = 'hex'")
    return bytes.fromhex(value[2:].decode("ascii"))


class ReplicaIdentity(enum.Enum):
    """A table's replica identity, valued as ``pg_class.relreplident``."""

    DEFAULT = "d"
    NOTHING = "n"
    FULL = "f"
    INDEX = "i"


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

    #: Only set inside a streamed transaction (protocol version 2, which the relay does
    #: not enable): always None here.
    xid: int | None
    #: The table's oid: data messages refer to the relation by it.
    relation_id: int
    namespace: str
    name: str
    replica_identity: ReplicaIdentity
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """A message written with ``pg_logical_emit_message`` (needs option ``messages``)."""

    #: As `Relation.xid`: always None here.
    xid: int | None
    #: Whether it was part of a transaction (between Begin and Commit) or sent at once.
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


#: What `decode_message` returns.
PgOutputMessage: TypeAlias = Relation | LogicalMessage


def decode_message(buf: bytes | bytearray | memoryview, offset: int = 0) -> PgOutputMessage:
    """Decode the Relation or logical Message starting at ``offset`` and running to the end.

    Raises:
        PgOutputError: the message is of another kind, truncated or has trailing bytes.

    """
    data = buf if type(buf) is bytes else bytes(buf)
    try:
        tag = data[offset]
    except IndexError:
        raise PgOutputError("empty pgoutput message") from None
    decoder = _DECODERS.get(tag)
    if decoder is None:
        raise PgOutputError(_unknown_tag_message(tag))
    try:
        return decoder(data, offset + 1)
    except (struct.error, IndexError):
        # Reading past the end is how a truncated message shows up; naming the
        # message beats a bare struct.error deep in the relay loop.
        raise PgOutputError(f"truncated pgoutput {chr(tag)!r} message") from None


_TRANSACTIONAL: Final = 1
_KEY_COLUMN: Final = 1


def _unknown_tag_message(tag: int) -> str:
    if chr(tag) in "bPKrp":
        return (
            f"pgoutput message {chr(tag)!r} is two-phase commit (protocol version 3), "
            "which the relay does not enable"
        )
    if chr(tag) in "BCIUDTOYSEcA":
        return f"pgoutput message {chr(tag)!r} is read in place, not by decode_message"
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


def _decode_relation(buf: bytes, pos: int) -> Relation:
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
    return Relation(None, relation_id, namespace, name, replica_identity, tuple(columns))


def _decode_logical_message(buf: bytes, pos: int) -> LogicalMessage:
    flags, lsn = _U8_U64.unpack_from(buf, pos)
    prefix, pos = _read_string(buf, pos + 9)
    (length,) = _U32.unpack_from(buf, pos)
    pos += 4
    content = buf[pos : pos + length]
    _check_end(buf, pos + length, "M")
    return LogicalMessage(None, bool(flags & _TRANSACTIONAL), lsn, prefix, content)


_DECODERS: Final[dict[int, Callable[[bytes, int], PgOutputMessage]]] = {
    RELATION_TAG: _decode_relation,
    MESSAGE_TAG: _decode_logical_message,
}
