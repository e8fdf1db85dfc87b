"""The pgoutput decoder, checked against bytes captured from a real PostgreSQL 15."""

from __future__ import annotations

import dataclasses
import struct
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from relay import pgoutput
from relay.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    BinaryValue,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    PgOutputError,
    PrimaryKeepalive,
    Relation,
    ReplicaIdentity,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TypeInfo,
    Update,
    XLogData,
    decode_copy_data,
    decode_keepalive,
    decode_message,
    decode_row,
    decode_text_value,
    decode_xlogdata,
    encode_standby_status,
    format_lsn,
    parse_lsn,
)
from tests.unit import pgoutput_fixtures as fx

OUTBOX_COLUMNS = ("id", "i4", "i2", "t", "vc", "u", "jb", "j", "bt", "ts", "b", "m", "big")
BIG_VALUE_LENGTH = 70 * 32  # string_agg of 70 md5 hex digests


def decode(data: bytes, *, in_stream: bool = False) -> pgoutput.PgOutputMessage:
    return decode_message(data, in_stream=in_stream)


def outbox_relation() -> Relation:
    relation = decode(fx.RELATION_OUTBOX)
    assert isinstance(relation, Relation)
    return relation


# --- A whole peek, as the relay would read it ------------------------------------------


def test_every_captured_change_decodes_in_order() -> None:
    messages = [decode(data) for _lsn, _xid, data in fx.PEEK_CHANGES]

    tags = "".join(
        {
            Begin: "B",
            Commit: "C",
            Origin: "O",
            Relation: "R",
            TypeInfo: "Y",
            Insert: "I",
            Update: "U",
            Delete: "D",
            Truncate: "T",
            LogicalMessage: "M",
        }[type(message)]
        for message in messages
    )
    assert tags == "BYRICBICBIMCMBUCBUCBRIICBUCBDCBDCBYRTCBRTCBOYRICBIC"


def test_begin_and_commit_agree_with_the_server_lsns_and_xids() -> None:
    begin: Begin | None = None
    commits = 0
    for lsn, xid, data in fx.PEEK_CHANGES:
        message = decode(data)
        if isinstance(message, Begin):
            assert message.xid == xid
            begin = message
        elif isinstance(message, Commit):
            assert begin is not None
            # The peek reports a commit at the end of its record: what a relay confirms.
            assert message.end_lsn == parse_lsn(lsn)
            assert message.commit_lsn == begin.final_lsn
            assert message.commit_time_us == begin.commit_time_us
            begin = None
            commits += 1
    assert commits == 13


def test_commit_time_is_an_aware_datetime() -> None:
    begin = decode(fx.BEGIN_FROM_ORIGIN)
    assert isinstance(begin, Begin)
    # pg_replication_origin_xact_setup set the commit timestamp explicitly.
    assert begin.commit_time == datetime(2024, 1, 1, tzinfo=UTC)

    commit = decode(fx.COMMIT)
    assert isinstance(commit, Commit)
    assert commit.commit_time.tzinfo is UTC
    assert commit.commit_time.year >= 2024


def test_hot_path_messages_are_ordinary_frozen_dataclasses() -> None:
    # Begin, Insert and Commit are built without their __init__ for speed.
    begin = decode(fx.BEGIN)
    insert = decode(fx.INSERT_NULLS)
    commit = decode(fx.COMMIT)
    assert isinstance(begin, Begin)
    assert isinstance(insert, Insert)
    assert isinstance(commit, Commit)

    assert begin == Begin(begin.final_lsn, begin.commit_time_us, begin.xid)
    assert insert == Insert(None, insert.relation_id, insert.new)
    assert hash(commit) == hash(
        Commit(commit.flags, commit.commit_lsn, commit.end_lsn, commit.commit_time_us)
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        insert.new = ()  # type: ignore[misc]


# --- Relation and Type ------------------------------------------------------------------


def test_relation_describes_the_outbox_table() -> None:
    relation = outbox_relation()

    assert relation.xid is None
    assert (relation.namespace, relation.name) == ("public", "outbox")
    assert relation.replica_identity is ReplicaIdentity.DEFAULT
    assert tuple(column.name for column in relation.columns) == OUTBOX_COLUMNS
    assert [column.name for column in relation.columns if column.is_key] == ["id"]
    types = {column.name: column.type_oid for column in relation.columns}
    assert types["id"] == pgoutput.INT8_OID
    assert types["i4"] == pgoutput.INT4_OID
    assert types["i2"] == pgoutput.INT2_OID
    assert types["t"] == types["big"] == pgoutput.TEXT_OID
    assert types["vc"] == pgoutput.VARCHAR_OID
    assert types["u"] == pgoutput.UUID_OID
    assert types["jb"] == pgoutput.JSONB_OID
    assert types["j"] == pgoutput.JSON_OID
    assert types["bt"] == pgoutput.BYTEA_OID
    assert types["ts"] == pgoutput.TIMESTAMPTZ_OID
    assert types["b"] == pgoutput.BOOL_OID
    # varchar(20): atttypmod counts the 4-byte header.
    assert relation.columns[4].type_modifier == 24
    assert relation.columns[0].type_modifier == -1


def test_type_message_names_the_enum_the_relation_uses() -> None:
    type_info = decode(fx.TYPE_MOOD)

    assert isinstance(type_info, TypeInfo)
    assert (type_info.namespace, type_info.name) == ("public", "mood")
    assert outbox_relation().columns[11].type_oid == type_info.type_oid


def test_replica_identity_full_makes_every_column_a_key() -> None:
    relation = decode(fx.RELATION_AUDIT)

    assert isinstance(relation, Relation)
    assert relation.name == "audit"
    assert relation.replica_identity is ReplicaIdentity.FULL
    assert [(column.name, column.is_key) for column in relation.columns] == [
        ("id", True),
        ("note", True),
    ]


# --- Row changes ------------------------------------------------------------------------


def test_insert_carries_the_text_output_of_every_column() -> None:
    insert = decode(fx.INSERT_ALL_TYPES)

    assert isinstance(insert, Insert)
    assert insert.xid is None
    assert insert.relation_id == outbox_relation().relation_id
    assert insert.new[:12] == (
        b"1",
        b"-2147483648",
        b"32767",
        "hello 'world' é".encode(),
        b"vc",
        b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        b'{"k": [1, 2.5, null]}',
        b'{"j":  1}',
        b"\\x00ff10",
        b"2024-03-05 12:34:56.789012+00",
        b"t",
        b"sad",
    )
    big = insert.new[12]
    assert isinstance(big, bytes)
    assert len(big) == BIG_VALUE_LENGTH
    assert big.startswith(b"c4ca4238a0b923820dcc509a6f75849b")  # md5('1')


def test_decode_row_converts_the_common_types() -> None:
    insert = decode(fx.INSERT_ALL_TYPES)
    assert isinstance(insert, Insert)

    row = decode_row(outbox_relation(), insert.new)

    assert list(row) == list(OUTBOX_COLUMNS)
    assert row["id"] == 1
    assert row["i4"] == -2147483648
    assert row["i2"] == 32767
    assert row["t"] == "hello 'world' é"
    assert row["vc"] == "vc"
    assert row["u"] == uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    assert row["jb"] == b'{"k": [1, 2.5, null]}'
    assert row["j"] == b'{"j":  1}'  # json keeps the text as written
    assert row["bt"] == b"\x00\xff\x10"
    assert row["ts"] == datetime(2024, 3, 5, 12, 34, 56, 789012, tzinfo=UTC)
    assert row["b"] is True
    assert row["m"] == b"sad"  # an enum: not a type the helper knows
    assert isinstance(row["big"], str)


def test_insert_of_nulls() -> None:
    insert = decode(fx.INSERT_NULLS)

    assert isinstance(insert, Insert)
    assert insert.new == (b"2",) + (None,) * 12
    assert decode_row(outbox_relation(), insert.new)["t"] is None


def test_update_skipping_an_unchanged_toasted_column() -> None:
    update = decode(fx.UPDATE_UNCHANGED_TOAST)

    assert isinstance(update, Update)
    assert update.key is None
    assert update.old is None
    assert update.new[3] == b"changed"
    assert update.new[12] is UNCHANGED_TOAST
    assert decode_row(outbox_relation(), update.new)["big"] is UNCHANGED_TOAST


def test_update_changing_the_key_sends_the_old_key() -> None:
    update = decode(fx.UPDATE_KEY_CHANGED)

    assert isinstance(update, Update)
    assert update.key == (b"2",) + (None,) * 12
    assert update.old is None
    assert update.new == (b"20",) + (None,) * 12


def test_update_with_replica_identity_full_sends_the_old_row() -> None:
    update = decode(fx.UPDATE_FULL_IDENTITY)

    assert isinstance(update, Update)
    assert update.key is None
    assert update.old == (b"1", b"a")
    assert update.new == (b"1", b"b")


def test_delete_sends_the_key_or_the_old_row() -> None:
    by_key = decode(fx.DELETE_BY_KEY)
    full = decode(fx.DELETE_FULL_IDENTITY)

    assert isinstance(by_key, Delete)
    assert by_key.key == (b"20",) + (None,) * 12
    assert by_key.old is None
    assert isinstance(full, Delete)
    assert full.key is None
    assert full.old == (b"2", None)


def test_truncate_lists_relations_and_options() -> None:
    plain = decode(fx.TRUNCATE)
    cascade = decode(fx.TRUNCATE_CASCADE_RESTART_IDENTITY)
    audit = decode(fx.RELATION_AUDIT)

    assert plain == Truncate(
        None, (outbox_relation().relation_id,), cascade=False, restart_identity=False
    )
    assert isinstance(audit, Relation)
    assert cascade == Truncate(None, (audit.relation_id,), cascade=True, restart_identity=True)


def test_binary_values_are_marked_as_such() -> None:
    insert = decode(fx.INSERT_ALL_TYPES_BINARY)

    assert isinstance(insert, Insert)
    assert insert.new[0] == BinaryValue(struct.pack(">q", 1))
    assert insert.new[1] == BinaryValue(struct.pack(">i", -2147483648))
    assert insert.new[5] == BinaryValue(uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").bytes)
    assert insert.new[10] == BinaryValue(b"\x01")
    # decode_row leaves what it cannot read as text alone.
    assert decode_row(outbox_relation(), insert.new)["id"] == BinaryValue(struct.pack(">q", 1))


# --- Origin and logical messages -------------------------------------------------------


def test_origin_names_the_upstream_and_its_commit_lsn() -> None:
    assert decode(fx.ORIGIN) == Origin(commit_lsn=parse_lsn("0/ABCDEF"), name="upstream")


def test_transactional_logical_message() -> None:
    message = decode(fx.MESSAGE_TRANSACTIONAL)

    assert isinstance(message, LogicalMessage)
    assert message.transactional is True
    assert message.prefix == "outbox"
    assert message.content == b"transactional"
    assert message.xid is None


def test_non_transactional_logical_message() -> None:
    message = decode(fx.MESSAGE_NON_TRANSACTIONAL)
    (row_lsn,) = [
        lsn for lsn, _xid, data in fx.PEEK_CHANGES if data is fx.MESSAGE_NON_TRANSACTIONAL
    ]

    assert isinstance(message, LogicalMessage)
    assert message.transactional is False
    assert message.prefix == "relay.ping"
    assert message.content == b"\x00\xff"
    assert message.lsn == parse_lsn(row_lsn)


# --- Streamed transactions (protocol version 2) ----------------------------------------


def test_streamed_transaction_messages() -> None:
    assert decode(fx.STREAM_START_FIRST) == StreamStart(fx.STREAMED_XID, first_segment=True)
    assert decode(fx.STREAM_START_NEXT) == StreamStart(fx.STREAMED_XID, first_segment=False)
    assert decode(fx.STREAM_STOP) == StreamStop()
    commit = decode(fx.STREAM_COMMIT)
    assert isinstance(commit, StreamCommit)
    assert commit.xid == fx.STREAMED_XID
    assert commit.end_lsn > commit.commit_lsn
    assert decode(fx.STREAM_ABORT) == StreamAbort(
        fx.STREAM_ABORT_XID, fx.STREAM_ABORT_XID, abort_lsn=None, abort_time_us=None
    )


def test_inside_a_stream_data_messages_carry_the_xid() -> None:
    type_info = decode(fx.TYPE_IN_STREAM, in_stream=True)
    relation = decode(fx.RELATION_IN_STREAM, in_stream=True)
    insert = decode(fx.INSERT_IN_STREAM, in_stream=True)
    message = decode(fx.MESSAGE_IN_STREAM, in_stream=True)

    assert isinstance(type_info, TypeInfo)
    assert type_info.xid == fx.STREAMED_XID
    assert isinstance(relation, Relation)
    assert relation.xid == fx.STREAMED_XID
    assert tuple(column.name for column in relation.columns) == OUTBOX_COLUMNS
    assert isinstance(insert, Insert)
    assert insert.xid == fx.STREAMED_XID
    assert insert.new[:4] == (b"100", None, None, b"x" * 100)
    assert isinstance(message, LogicalMessage)
    assert (message.xid, message.transactional) == (fx.STREAMED_XID, True)
    assert (message.prefix, message.content) == ("big", b"in stream")


def test_a_streamed_insert_read_as_unstreamed_is_rejected() -> None:
    with pytest.raises(PgOutputError):
        decode(fx.INSERT_IN_STREAM)


def test_stream_abort_of_protocol_version_4_carries_lsn_and_time() -> None:
    data = b"A" + struct.pack(">IIQq", 900, 901, 0x1234, 5)

    assert decode(data) == StreamAbort(900, 901, abort_lsn=0x1234, abort_time_us=5)


# --- CopyData framing --------------------------------------------------------------------


def test_keepalive_frames() -> None:
    quiet = decode_keepalive(memoryview(fx.KEEPALIVE_FRAME))
    urgent = decode_copy_data(fx.KEEPALIVE_REPLY_REQUESTED_FRAME)

    assert quiet.reply_requested is False
    assert quiet.wal_end == parse_lsn("0/23BCCA0")
    assert isinstance(urgent, PrimaryKeepalive)
    assert urgent.reply_requested is True
    assert urgent.wal_end >= quiet.wal_end
    assert urgent.send_time_us > quiet.send_time_us


def test_xlogdata_frames_of_one_transaction() -> None:
    frames = [
        fx.XLOGDATA_BEGIN_FRAME,
        fx.XLOGDATA_TYPE_FRAME,
        fx.XLOGDATA_RELATION_FRAME,
        fx.XLOGDATA_INSERT_FRAME,
        fx.XLOGDATA_COMMIT_FRAME,
    ]
    decoded = [decode_copy_data(memoryview(frame)) for frame in frames]
    assert all(isinstance(frame, XLogData) for frame in decoded)
    begin, type_info, relation, insert, commit = (
        frame.message for frame in decoded if isinstance(frame, XLogData)
    )

    assert isinstance(begin, Begin)
    assert isinstance(type_info, TypeInfo)
    assert isinstance(relation, Relation)
    assert isinstance(insert, Insert)
    assert isinstance(commit, Commit)
    assert commit.commit_lsn == begin.final_lsn
    # The walsender stamps the Commit frame with the end of the commit record.
    assert isinstance(decoded[-1], XLogData)
    assert decoded[-1].data_start == commit.end_lsn
    row = decode_row(relation, insert.new)
    assert (row["id"], row["t"], row["jb"]) == (7, "via walsender", b'{"n": 7}')


def test_decode_xlogdata_fast_path_agrees_with_decode_copy_data() -> None:
    data_start, wal_end, message = decode_xlogdata(memoryview(fx.XLOGDATA_INSERT_FRAME))
    full = decode_copy_data(fx.XLOGDATA_INSERT_FRAME)

    assert isinstance(full, XLogData)
    assert (data_start, wal_end, message) == (full.data_start, full.wal_end, full.message)
    assert isinstance(message, Insert)
    assert all(type(value) in {bytes, type(None)} for value in message.new)


def test_decode_xlogdata_passes_the_stream_flag_on() -> None:
    frame = fx.XLOGDATA_INSERT_FRAME[:25] + fx.INSERT_IN_STREAM

    _start, _end, message = decode_xlogdata(frame, in_stream=True)

    assert isinstance(message, Insert)
    assert message.xid == fx.STREAMED_XID


def test_standby_status_update_bytes() -> None:
    now = datetime(2000, 1, 1, 0, 0, 1, 5, tzinfo=UTC)

    data = encode_standby_status(
        parse_lsn("0/23BCD80"), parse_lsn("0/23BCD80"), parse_lsn("0/2343E50"), now=now
    )

    assert data == bytes.fromhex(
        "72"  # 'r'
        "00000000023bcd80"  # written
        "00000000023bcd80"  # flushed
        "0000000002343e50"  # applied
        "00000000000f4245"  # 1 000 005 microseconds after 2000-01-01
        "00"  # no reply requested
    )


def test_standby_status_update_clock_and_reply_flag() -> None:
    now = datetime(2024, 3, 5, 13, 34, 56, 789012, tzinfo=timezone(timedelta(hours=1)))

    data = encode_standby_status(1, 2, 3, now=now, reply_requested=True)

    assert len(data) == 34
    assert data[-1] == 1
    (clock,) = struct.unpack_from(">q", data, 25)
    assert pgoutput.pg_timestamp_to_datetime(clock) == now
    assert pgoutput.datetime_to_pg_timestamp(now) == clock


# --- Malformed input ----------------------------------------------------------------------

MESSAGES = {
    name: getattr(fx, name)
    for name in (
        "BEGIN",
        "TYPE_MOOD",
        "RELATION_OUTBOX",
        "INSERT_ALL_TYPES",
        "COMMIT",
        "INSERT_NULLS",
        "MESSAGE_TRANSACTIONAL",
        "MESSAGE_NON_TRANSACTIONAL",
        "UPDATE_UNCHANGED_TOAST",
        "UPDATE_KEY_CHANGED",
        "UPDATE_FULL_IDENTITY",
        "DELETE_BY_KEY",
        "DELETE_FULL_IDENTITY",
        "TRUNCATE",
        "ORIGIN",
        "INSERT_ALL_TYPES_BINARY",
        "STREAM_START_FIRST",
        "STREAM_STOP",
        "STREAM_COMMIT",
        "STREAM_ABORT",
    )
}
STREAM_MESSAGES = {
    name: getattr(fx, name)
    for name in ("TYPE_IN_STREAM", "RELATION_IN_STREAM", "INSERT_IN_STREAM", "MESSAGE_IN_STREAM")
}


def test_pgoutput_error_is_a_value_error() -> None:
    assert issubclass(PgOutputError, ValueError)


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_every_truncation_of_a_message_is_rejected(name: str) -> None:
    data = MESSAGES[name]
    for cut in range(len(data)):
        with pytest.raises(PgOutputError):
            decode(data[:cut])


@pytest.mark.parametrize("name", sorted(STREAM_MESSAGES))
def test_every_truncation_of_a_streamed_message_is_rejected(name: str) -> None:
    data = STREAM_MESSAGES[name]
    for cut in range(len(data)):
        with pytest.raises(PgOutputError):
            decode(data[:cut], in_stream=True)


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_trailing_bytes_are_rejected(name: str) -> None:
    # A Stream Abort with extra bytes reads as a truncated protocol 4 one.
    with pytest.raises(PgOutputError, match=r"unexpected bytes|truncated pgoutput 'A'"):
        decode(MESSAGES[name] + b"\x00")


def test_truncated_frames_are_rejected() -> None:
    for frame in (fx.XLOGDATA_INSERT_FRAME, fx.XLOGDATA_COMMIT_FRAME):
        for cut in range(len(frame)):
            with pytest.raises(PgOutputError):
                decode_copy_data(frame[:cut])
            with pytest.raises(PgOutputError):
                decode_xlogdata(frame[:cut])
    for cut in range(len(fx.KEEPALIVE_FRAME)):
        with pytest.raises(PgOutputError):
            decode_copy_data(fx.KEEPALIVE_FRAME[:cut])


def test_wrong_frame_kinds_are_rejected() -> None:
    with pytest.raises(PgOutputError, match="expected an XLogData"):
        decode_xlogdata(fx.KEEPALIVE_FRAME + bytes(8))
    with pytest.raises(PgOutputError, match="expected a keepalive"):
        decode_keepalive(fx.XLOGDATA_BEGIN_FRAME[:18])
    with pytest.raises(PgOutputError, match="unknown replication frame tag"):
        decode_copy_data(b"x" + fx.KEEPALIVE_FRAME[1:])


def test_unknown_and_two_phase_messages_are_named() -> None:
    with pytest.raises(PgOutputError, match="unknown pgoutput message type 0x5a"):
        decode(b"Z")
    with pytest.raises(PgOutputError, match="two-phase"):
        decode(b"P" + bytes(40))


def test_unknown_column_kind_is_rejected() -> None:
    data = bytearray(fx.INSERT_NULLS)
    data[-1] = ord("x")

    with pytest.raises(PgOutputError, match="unknown column kind 0x78"):
        decode(bytes(data))


def test_corrupt_text_length_is_reported_as_truncation() -> None:
    # Column 1 is 't', then a length of 2**32 - 1: far past the end of the message.
    data = fx.INSERT_NULLS[:8] + b"t\xff\xff\xff\xff" + b"2" + fx.INSERT_NULLS[15:]

    with pytest.raises(PgOutputError, match="truncated"):
        decode(data)


def test_unknown_replica_identity_is_rejected() -> None:
    at = len(b"R") + 4 + len(b"public\x00outbox\x00")
    data = fx.RELATION_OUTBOX[:at] + b"z" + fx.RELATION_OUTBOX[at + 1 :]

    with pytest.raises(PgOutputError, match="replica identity"):
        decode(data)


def test_invalid_utf8_in_a_name_is_rejected() -> None:
    data = fx.ORIGIN.replace(b"upstream", b"up\xffstream")

    with pytest.raises(PgOutputError, match="UTF-8"):
        decode(data)


def test_empty_message_is_rejected() -> None:
    with pytest.raises(PgOutputError, match="empty"):
        decode(b"")
    with pytest.raises(PgOutputError, match="empty"):
        decode_copy_data(b"")


# --- Text values, LSNs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_oid", "text", "expected"),
    [
        (pgoutput.INT8_OID, b"-9223372036854775808", -9223372036854775808),
        (pgoutput.INT4_OID, b"42", 42),
        (pgoutput.INT2_OID, b"-7", -7),
        (pgoutput.TEXT_OID, "ünïcode".encode(), "ünïcode"),
        (pgoutput.VARCHAR_OID, b"", ""),
        (pgoutput.BPCHAR_OID, b"ab  ", "ab  "),
        (pgoutput.BOOL_OID, b"f", False),
        (pgoutput.BYTEA_OID, b"\\x", b""),
        (pgoutput.BYTEA_OID, b"\\xDEADbeef", b"\xde\xad\xbe\xef"),
        (pgoutput.JSONB_OID, b'{"a": 1}', b'{"a": 1}'),
        (
            pgoutput.UUID_OID,
            b"00000000-0000-0000-0000-000000000001",
            uuid.UUID(int=1),
        ),
        (
            pgoutput.TIMESTAMPTZ_OID,
            b"2024-03-05 18:04:56.5+05:30",
            datetime(2024, 3, 5, 12, 34, 56, 500000, tzinfo=UTC),
        ),
        (
            pgoutput.TIMESTAMPTZ_OID,
            b"1901-12-13 20:45:52+00:09:21",
            datetime(1901, 12, 13, 20, 36, 31, tzinfo=UTC),
        ),
        (pgoutput.TIMESTAMP_OID, b"2024-03-05 12:34:56", datetime(2024, 3, 5, 12, 34, 56)),  # noqa: DTZ001
        (pgoutput.JSON_OID - 1, b"whatever", b"whatever"),
    ],
)
def test_decode_text_value(type_oid: int, text: bytes, expected: object) -> None:
    assert decode_text_value(type_oid, text) == expected


@pytest.mark.parametrize(
    ("type_oid", "text"),
    [
        (pgoutput.INT4_OID, b"4x"),
        (pgoutput.BOOL_OID, b"true"),
        (pgoutput.BYTEA_OID, b"\\000"),
        (pgoutput.BYTEA_OID, b"\\xabc"),
        (pgoutput.UUID_OID, b"not-a-uuid"),
        (pgoutput.TIMESTAMPTZ_OID, b"infinity"),
        (pgoutput.TIMESTAMPTZ_OID, b"0044-03-15 12:00:00+00 BC"),
        (pgoutput.TEXT_OID, b"\xff"),
    ],
)
def test_decode_text_value_rejects_bad_text(type_oid: int, text: bytes) -> None:
    with pytest.raises(PgOutputError, match=f"type oid {type_oid}"):
        decode_text_value(type_oid, text)


def test_decode_row_rejects_a_row_of_another_shape() -> None:
    with pytest.raises(PgOutputError, match="Relation message missed"):
        decode_row(outbox_relation(), (b"1", b"2"))


@pytest.mark.parametrize(
    ("text", "value"),
    [("0/0", 0), ("0/1548AF8", 0x1548AF8), ("16/B374D848", 0x16_B374D848)],
)
def test_lsn_text_round_trip(text: str, value: int) -> None:
    assert parse_lsn(text) == value
    assert format_lsn(value) == text


@pytest.mark.parametrize(
    "text", ["", "0", "1548AF8", "0/", "x/1", "0/1/2", "0x1/0", " 0/1", "1_0/0", "123456789/0"]
)
def test_parse_lsn_rejects_malformed_text(text: str) -> None:
    with pytest.raises(PgOutputError, match="invalid LSN"):
        parse_lsn(text)
