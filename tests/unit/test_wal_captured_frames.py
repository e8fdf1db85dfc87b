"""The decoder production runs (`relay.wal.StreamDecoder`, `read_insert_columns`) on
pgoutput frames captured from a real PostgreSQL 15 server (`tests.unit.pgoutput_fixtures`).
"""

from __future__ import annotations

import struct

from relay.pgoutput import Begin, Commit, Insert, decode_message
from relay.wal import StreamDecoder, WalTransaction, read_insert_columns
from tests.unit import pgoutput_fixtures as captured


def xlogdata(message: bytes, lsn: int = 0) -> bytes:
    return struct.pack(">BQQq", ord("w"), lsn, lsn, 0) + message


def test_the_fast_insert_reader_agrees_with_the_full_decoder_on_captured_inserts() -> None:
    for frame in (captured.INSERT_ALL_TYPES, captured.INSERT_NULLS):
        insert = decode_message(frame)
        assert isinstance(insert, Insert)
        width = len(insert.new)
        assert read_insert_columns(xlogdata(frame), width) == list(insert.new)
        # Fewer columns than the row has: only those are read.
        assert read_insert_columns(xlogdata(frame), 2) == list(insert.new[:2])


def test_captured_transactions_carry_lsns_and_xid_as_the_server_sent_them() -> None:
    stream = StreamDecoder(
        schema="public", table="not_the_fixture_table", slot_name="s", message_prefix="outbox"
    )
    out: list[WalTransaction] = []
    frames = [
        captured.BEGIN,
        captured.TYPE_MOOD,
        captured.RELATION_OUTBOX,
        captured.INSERT_ALL_TYPES,
        captured.COMMIT,
    ]
    stream.feed([xlogdata(f) for f in frames], out)
    begin, commit = decode_message(captured.BEGIN), decode_message(captured.COMMIT)
    assert isinstance(begin, Begin)
    assert isinstance(commit, Commit)
    [transaction] = out
    assert transaction.xid == begin.xid
    assert transaction.commit_lsn == commit.commit_lsn
    assert transaction.end_lsn == commit.end_lsn
    assert transaction.commit_time_us == commit.commit_time_us
    assert transaction.events == ()  # not the outbox relation: its inserts are not read
    assert stream.wal_end == commit.end_lsn
    assert not stream.in_transaction


def test_a_captured_transactional_message_that_is_no_envelope_is_rejected_with_a_reason() -> None:
    stream = StreamDecoder(schema="public", table="x", slot_name="s", message_prefix="outbox")
    out: list[WalTransaction] = []
    frames = [
        captured.BEGIN,
        captured.MESSAGE_TRANSACTIONAL,
        captured.MESSAGE_NON_TRANSACTIONAL,
        captured.TRUNCATE,
        captured.COMMIT,
    ]
    stream.feed([xlogdata(f) for f in frames], out)
    [transaction] = out
    [rejected] = transaction.rejected
    assert rejected.content == b"transactional"
    assert "JSON" in rejected.reason
    assert stream.truncated == 1
