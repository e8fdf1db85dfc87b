"""The pgoutput decoder WAL mode runs, checked against bytes captured from a real PostgreSQL 15."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta, timezone

import pytest

from relay import pgoutput
from relay.pgoutput import (
    BEGIN_BODY,
    BEGIN_TAG,
    COMMIT_BODY,
    COMMIT_TAG,
    INSERT_TAG,
    MESSAGE_TAG,
    RELATION_ID,
    RELATION_TAG,
    TRUNCATE_TAG,
    XLOGDATA_HEADER_SIZE,
    XLOGDATA_TAG,
    LogicalMessage,
    PgOutputError,
    Relation,
    ReplicaIdentity,
    bytea_from_text,
    decode_keepalive,
    decode_message,
    encode_standby_status,
    format_lsn,
    parse_lsn,
    read_insert_columns,
)
from tests.unit import pgoutput_fixtures as fx

OUTBOX_COLUMNS = ("id", "i4", "i2", "t", "vc", "u", "jb", "j", "bt", "ts", "b", "m", "big")
BIG_VALUE_LENGTH = 70 * 32  # string_agg of 70 md5 hex digests


def xlogdata(message: bytes, lsn: int = 0) -> bytes:
    """`message` in an XLogData frame, as the walsender sends it."""
    return struct.pack(">BQQq", XLOGDATA_TAG, lsn, lsn, 0) + message


def outbox_relation() -> Relation:
    relation = decode_message(fx.RELATION_OUTBOX)
    assert isinstance(relation, Relation)
    return relation


# --- A whole peek, as the relay would read it ------------------------------------------


def test_the_stream_knows_every_captured_message_tag() -> None:
    tags = "".join(chr(data[0]) for _lsn, _xid, data in fx.PEEK_CHANGES)
    assert tags == "BYRICBICBIMCMBUCBUCBRIICBUCBDCBDCBYRTCBRTCBOYRICBIC"
    read_in_place = {BEGIN_TAG, COMMIT_TAG, INSERT_TAG, TRUNCATE_TAG}
    for _lsn, _xid, data in fx.PEEK_CHANGES:
        if data[0] in {RELATION_TAG, MESSAGE_TAG}:
            decode_message(data)
        elif data[0] not in read_in_place:
            # Update, Delete, Origin, Type: the stream skips them by their tag.
            with pytest.raises(PgOutputError, match="read in place"):
                decode_message(data)


def test_begin_and_commit_agree_with_the_server_lsns_and_xids() -> None:
    begin: tuple[int, int, int] | None = None
    commits = 0
    for lsn, xid, data in fx.PEEK_CHANGES:
        if data[0] == BEGIN_TAG:
            assert len(data) == 1 + BEGIN_BODY.size
            begin = BEGIN_BODY.unpack_from(data, 1)
            assert begin[2] == xid
        elif data[0] == COMMIT_TAG:
            assert begin is not None
            assert len(data) == 1 + COMMIT_BODY.size
            _flags, commit_lsn, end_lsn, commit_time_us = COMMIT_BODY.unpack_from(data, 1)
            # The peek reports a commit at the end of its record: what a relay confirms.
            assert end_lsn == parse_lsn(lsn)
            assert commit_lsn == begin[0]
            assert commit_time_us == begin[1]
            begin = None
            commits += 1
    assert commits == 13


def test_commit_time_is_an_aware_datetime() -> None:
    _final_lsn, commit_time_us, _xid = BEGIN_BODY.unpack_from(fx.BEGIN_FROM_ORIGIN, 1)
    # pg_replication_origin_xact_setup set the commit timestamp explicitly.
    assert pgoutput.pg_timestamp_to_datetime(commit_time_us) == datetime(2024, 1, 1, tzinfo=UTC)


# --- Relation ------------------------------------------------------------------------


def test_relation_describes_the_outbox_table() -> None:
    relation = outbox_relation()

    assert relation.xid is None
    assert (relation.namespace, relation.name) == ("public", "outbox")
    assert relation.replica_identity is ReplicaIdentity.DEFAULT
    assert tuple(column.name for column in relation.columns) == OUTBOX_COLUMNS
    assert [column.name for column in relation.columns if column.is_key] == ["id"]
    types = {column.name: column.type_oid for column in relation.columns}
    # pg_type oids: int8, int4, int2, text, varchar, uuid, jsonb, json, bytea, timestamptz.
    assert [types[name] for name in ("id", "i4", "i2", "t", "vc", "u", "jb", "j", "bt", "ts")] == [
        20, 23, 21, 25, 1043, 2950, 3802, 114, 17, 1184,
    ]  # fmt: skip
    # varchar(20): atttypmod counts the 4-byte header.
    assert relation.columns[4].type_modifier == 24
    assert relation.columns[0].type_modifier == -1


def test_replica_identity_full_makes_every_column_a_key() -> None:
    relation = decode_message(fx.RELATION_AUDIT)

    assert isinstance(relation, Relation)
    assert relation.name == "audit"
    assert relation.replica_identity is ReplicaIdentity.FULL
    assert [(column.name, column.is_key) for column in relation.columns] == [
        ("id", True),
        ("note", True),
    ]


# --- Inserts -----------------------------------------------------------------------------


def test_insert_carries_the_text_output_of_every_column() -> None:
    frame = xlogdata(fx.INSERT_ALL_TYPES)

    assert RELATION_ID.unpack_from(frame, XLOGDATA_HEADER_SIZE + 1)[0] == (
        outbox_relation().relation_id
    )
    values = read_insert_columns(frame, len(OUTBOX_COLUMNS))
    assert values[:12] == [
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
    ]
    big = values[12]
    assert isinstance(big, bytes)
    assert len(big) == BIG_VALUE_LENGTH
    assert big.startswith(b"c4ca4238a0b923820dcc509a6f75849b")  # md5('1')


def test_only_the_columns_asked_for_are_read_and_missing_ones_are_null() -> None:
    frame = xlogdata(fx.INSERT_ALL_TYPES)
    assert read_insert_columns(frame, 2) == [b"1", b"-2147483648"]
    assert read_insert_columns(xlogdata(fx.INSERT_NULLS), 15) == [b"2"] + [None] * 14


def test_an_insert_read_from_the_walsender_frame() -> None:
    values = read_insert_columns(fx.XLOGDATA_INSERT_FRAME, len(OUTBOX_COLUMNS))
    relation = decode_message(fx.XLOGDATA_RELATION_FRAME, XLOGDATA_HEADER_SIZE)
    assert isinstance(relation, Relation)
    row = dict(zip((column.name for column in relation.columns), values, strict=True))
    assert (row["id"], row["t"], row["jb"]) == (b"7", b"via walsender", b'{"n": 7}')


def test_binary_and_unchanged_toast_values_are_refused() -> None:
    # Options the relay does not set: values in binary format, and an Update's marker.
    with pytest.raises(PgOutputError, match="unexpected column kind 0x62"):
        read_insert_columns(xlogdata(fx.INSERT_ALL_TYPES_BINARY), 13)
    with pytest.raises(PgOutputError, match="unexpected column kind 0x75"):
        read_insert_columns(xlogdata(fx.UPDATE_UNCHANGED_TOAST), 13)
    with pytest.raises(PgOutputError, match="expected 'N'"):
        read_insert_columns(xlogdata(fx.DELETE_BY_KEY), 13)


def test_every_truncation_of_an_insert_is_rejected() -> None:
    for message in (fx.INSERT_ALL_TYPES, fx.INSERT_NULLS):
        frame = xlogdata(message)
        for cut in range(len(frame)):
            with pytest.raises(PgOutputError, match="truncated"):
                read_insert_columns(frame[:cut], len(OUTBOX_COLUMNS))


def test_corrupt_text_length_is_reported_as_truncation() -> None:
    # Column 1 is 't', then a length of 2**32 - 1: far past the end of the message.
    data = fx.INSERT_NULLS[:8] + b"t\xff\xff\xff\xff" + b"2" + fx.INSERT_NULLS[15:]

    with pytest.raises(PgOutputError, match="truncated"):
        read_insert_columns(xlogdata(data), 13)


def test_bytea_text_output_is_read_as_hex_only() -> None:
    assert bytea_from_text(b"\\x00ff10") == b"\x00\xff\x10"
    assert bytea_from_text(b"\\x") == b""
    assert bytea_from_text(None) is None
    with pytest.raises(PgOutputError, match="hex format"):
        bytea_from_text(b"\\000\\377")
    with pytest.raises(ValueError, match="hex"):
        bytea_from_text(b"\\x0g")


# --- Logical messages ------------------------------------------------------------------


def test_transactional_logical_message() -> None:
    message = decode_message(fx.MESSAGE_TRANSACTIONAL)

    assert isinstance(message, LogicalMessage)
    assert message.transactional is True
    assert message.prefix == "outbox"
    assert message.content == b"transactional"
    assert message.xid is None


def test_non_transactional_logical_message() -> None:
    message = decode_message(memoryview(xlogdata(fx.MESSAGE_NON_TRANSACTIONAL)), 25)
    (row_lsn,) = [
        lsn for lsn, _xid, data in fx.PEEK_CHANGES if data is fx.MESSAGE_NON_TRANSACTIONAL
    ]

    assert isinstance(message, LogicalMessage)
    assert message.transactional is False
    assert message.prefix == "relay.ping"
    assert message.content == b"\x00\xff"
    assert message.lsn == parse_lsn(row_lsn)


# --- CopyData framing --------------------------------------------------------------------


def test_keepalive_frames() -> None:
    quiet = decode_keepalive(memoryview(fx.KEEPALIVE_FRAME))
    urgent = decode_keepalive(fx.KEEPALIVE_REPLY_REQUESTED_FRAME)

    assert quiet.reply_requested is False
    assert quiet.wal_end == parse_lsn("0/23BCCA0")
    assert urgent.reply_requested is True
    assert urgent.wal_end >= quiet.wal_end
    assert urgent.send_time_us > quiet.send_time_us


def test_xlogdata_frames_of_one_transaction() -> None:
    begin, commit = fx.XLOGDATA_BEGIN_FRAME, fx.XLOGDATA_COMMIT_FRAME
    assert begin[0] == commit[0] == XLOGDATA_TAG
    assert begin[XLOGDATA_HEADER_SIZE] == BEGIN_TAG
    assert commit[XLOGDATA_HEADER_SIZE] == COMMIT_TAG
    final_lsn, _time, _xid = BEGIN_BODY.unpack_from(begin, XLOGDATA_HEADER_SIZE + 1)
    _flags, commit_lsn, end_lsn, _ = COMMIT_BODY.unpack_from(commit, XLOGDATA_HEADER_SIZE + 1)
    assert commit_lsn == final_lsn
    # The walsender stamps the Commit frame with the end of the commit record.
    assert struct.unpack_from(">Q", commit, 1)[0] == end_lsn


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
        "RELATION_OUTBOX",
        "RELATION_AUDIT",
        "MESSAGE_TRANSACTIONAL",
        "MESSAGE_NON_TRANSACTIONAL",
    )
}


def test_pgoutput_error_is_a_value_error() -> None:
    assert issubclass(PgOutputError, ValueError)


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_every_truncation_of_a_message_is_rejected(name: str) -> None:
    data = MESSAGES[name]
    for cut in range(len(data)):
        with pytest.raises(PgOutputError):
            decode_message(data[:cut])


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_trailing_bytes_are_rejected(name: str) -> None:
    with pytest.raises(PgOutputError, match="unexpected bytes"):
        decode_message(MESSAGES[name] + b"\x00")


def test_truncated_and_wrong_keepalives_are_rejected() -> None:
    for cut in range(len(fx.KEEPALIVE_FRAME)):
        with pytest.raises(PgOutputError, match="keepalive frame must be"):
            decode_keepalive(fx.KEEPALIVE_FRAME[:cut])
    with pytest.raises(PgOutputError, match="expected a keepalive"):
        decode_keepalive(fx.XLOGDATA_BEGIN_FRAME[:18])


def test_unknown_and_two_phase_messages_are_named() -> None:
    with pytest.raises(PgOutputError, match="unknown pgoutput message type 0x5a"):
        decode_message(b"Z")
    with pytest.raises(PgOutputError, match="two-phase"):
        decode_message(b"P" + bytes(40))


def test_unknown_replica_identity_is_rejected() -> None:
    at = len(b"R") + 4 + len(b"public\x00outbox\x00")
    data = fx.RELATION_OUTBOX[:at] + b"z" + fx.RELATION_OUTBOX[at + 1 :]

    with pytest.raises(PgOutputError, match="replica identity"):
        decode_message(data)


def test_invalid_utf8_in_a_name_is_rejected() -> None:
    data = fx.RELATION_OUTBOX.replace(b"outbox", b"out\xffbox")

    with pytest.raises(PgOutputError, match="UTF-8"):
        decode_message(data)


def test_empty_message_is_rejected() -> None:
    with pytest.raises(PgOutputError, match="empty"):
        decode_message(b"")


# --- LSNs --------------------------------------------------------------------------------


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
