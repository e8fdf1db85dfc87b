"""The decoder production runs (`relay.wal.StreamDecoder` over `relay.pgoutput`) on
pgoutput frames captured from a real PostgreSQL 15 server (`tests.unit.pgoutput_fixtures`).
"""

from __future__ import annotations

import datetime as dt
import struct

from relay.pgoutput import BEGIN_BODY, COMMIT_BODY, RELATION_ID, XLOGDATA_HEADER_SIZE, parse_lsn
from relay.wal import OUTBOX_COLUMNS, OutboxShape, StreamDecoder, WalTransaction
from tests.unit import pgoutput_fixtures as captured


def xlogdata(message: bytes, lsn: int = 0) -> bytes:
    return struct.pack(">BQQq", ord("w"), lsn, lsn, 0) + message


def test_a_captured_outbox_transaction_becomes_its_event() -> None:
    """Begin, Insert and Commit of a real outbox row, as the walsender sent them."""
    relation_id = RELATION_ID.unpack_from(captured.OUTBOX_INSERT_FRAME, XLOGDATA_HEADER_SIZE + 1)
    # migrations/0001_outbox.sql: the relay's columns in order, sent_at between state
    # and attempts.
    count = len(OUTBOX_COLUMNS)
    positions = (*range(count - 1), count)
    stream = StreamDecoder(schema="public", table="outbox", slot_name="s")
    stream.shape = OutboxShape(relation_id[0], positions, count + 1)
    out: list[WalTransaction] = []
    frames = [captured.OUTBOX_BEGIN_FRAME, captured.OUTBOX_INSERT_FRAME]
    stream.feed([memoryview(frame).tobytes() for frame in frames], out)
    assert out == []
    assert stream.in_transaction
    stream.feed([captured.OUTBOX_COMMIT_FRAME], out)

    [transaction] = out
    final_lsn, commit_time_us, xid = BEGIN_BODY.unpack_from(
        captured.OUTBOX_BEGIN_FRAME, XLOGDATA_HEADER_SIZE + 1
    )
    _, commit_lsn, end_lsn, _ = COMMIT_BODY.unpack_from(
        captured.OUTBOX_COMMIT_FRAME, XLOGDATA_HEADER_SIZE + 1
    )
    assert (transaction.commit_lsn, transaction.end_lsn, transaction.xid) == (
        final_lsn,
        end_lsn,
        xid,
    )
    assert commit_lsn == final_lsn
    assert transaction.commit_time_us == commit_time_us
    [event] = transaction.events
    assert (event.id, event.topic, event.key, event.attempts, event.lsn) == (
        1,
        "orders.events",
        "order-4711",
        0,
        final_lsn,
    )
    assert event.event_id == "70388cc1-16cd-4089-85c4-ea0f0a7d87da"
    assert event.created_at == dt.datetime(2026, 11, 22, 18, 59, 15, 698158, tzinfo=dt.UTC)
    assert event.value is not None
    assert event.value.startswith(b'{"lines":[{"qty":2,"sku":"SKU-1","price":"49.95"},')
    assert b", " not in event.value
    assert event.headers == (
        ("event_id", b"70388cc1-16cd-4089-85c4-ea0f0a7d87da"),
        ("event_type", b"OrderPlaced"),
        ("aggregate_type", b"order"),
        ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    )


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
    [transaction] = out
    # The xid and the commit's end as the server reported them in the peek.
    _, xid, _ = captured.PEEK_CHANGES[0]
    end_lsn, _, commit = captured.PEEK_CHANGES[4]
    assert commit is captured.COMMIT
    assert transaction.xid == xid == 804
    assert transaction.commit_lsn == BEGIN_BODY.unpack_from(captured.BEGIN, 1)[0]
    assert transaction.end_lsn == parse_lsn(end_lsn)
    assert transaction.commit_time_us == COMMIT_BODY.unpack_from(captured.COMMIT, 1)[3]
    assert transaction.events == ()  # not the outbox relation: its inserts are not read
    assert stream.wal_end == transaction.end_lsn
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
