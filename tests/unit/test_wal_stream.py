"""The pure parts of WAL mode: stream decoding, what the slot may confirm, envelopes."""

from __future__ import annotations

import base64
import datetime as dt
import json
import struct
import uuid

import pytest

from relay.events import OutboxEvent
from relay.pgoutput import (
    Column,
    PgOutputError,
    Relation,
    ReplicaIdentity,
    datetime_to_pg_timestamp,
)
from relay.slot import WalSetupError
from relay.wal import (
    OUTBOX_COLUMNS,
    AckTracker,
    EnvelopeError,
    HandOver,
    OutboxShape,
    Snapshot,
    StreamDecoder,
    WalTransaction,
    _Fetched,
    decode_envelope,
    message_event_id,
)

COMMIT_TIME = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
RELATION_ID = 16489
OTHER_RELATION_ID = 16500


# --- Frames as a walsender sends them -------------------------------------------------


def xlogdata(message: bytes, lsn: int = 0) -> bytes:
    return struct.pack(">BQQq", ord("w"), lsn, lsn, 0) + message


def keepalive(wal_end: int, *, reply: bool = False) -> bytes:
    return struct.pack(">BQqB", ord("k"), wal_end, 0, 1 if reply else 0)


def begin(commit_lsn: int, xid: int = 700) -> bytes:
    return xlogdata(
        b"B" + struct.pack(">QqI", commit_lsn, datetime_to_pg_timestamp(COMMIT_TIME), xid)
    )


def commit(commit_lsn: int, end_lsn: int) -> bytes:
    return xlogdata(
        b"C" + struct.pack(">BQQq", 0, commit_lsn, end_lsn, datetime_to_pg_timestamp(COMMIT_TIME))
    )


def cstring(text: str) -> bytes:
    return text.encode() + b"\0"


def relation(
    relation_id: int = RELATION_ID,
    name: str = "outbox",
    columns: tuple[str, ...] = OUTBOX_COLUMNS,
) -> bytes:
    body = struct.pack(">I", relation_id) + cstring("public") + cstring(name)
    body += struct.pack(">BH", ord("d"), len(columns))
    for column in columns:
        body += b"\0" + cstring(column) + struct.pack(">Ii", 25, -1)
    return xlogdata(b"R" + body)


def tuple_data(values: list[bytes | None]) -> bytes:
    body = struct.pack(">H", len(values))
    for value in values:
        body += b"n" if value is None else b"t" + struct.pack(">I", len(value)) + value
    return body


def outbox_row(
    row_id: int,
    key: str | None = "k",
    *,
    state: str = "pending",
    payload: str | None = '{"n": 1, "s": "a b"}',
    headers: str = '{"traceparent": "00-abc"}',
) -> dict[str, bytes | None]:
    return {
        "id": str(row_id).encode(),
        "event_id": str(uuid.UUID(int=row_id)).encode(),
        "topic": b"orders",
        "key": key.encode() if key is not None else None,
        "payload": payload.encode() if payload is not None else None,
        "payload_bytes": None if payload is not None else b"\\x000102",
        "headers": headers.encode(),
        "event_type": b"Placed",
        "aggregate_type": None,
        "created_at": b"2026-11-22 11:59:59.5+00",
        "state": state.encode(),
        "attempts": b"0",
    }


def insert(row: dict[str, bytes | None], relation_id: int = RELATION_ID) -> bytes:
    # Real rows carry more columns than the relay reads, in table order.
    values = [row[name] for name in OUTBOX_COLUMNS]
    return xlogdata(b"I" + struct.pack(">IB", relation_id, ord("N")) + tuple_data(values))


def message(prefix: str, content: bytes, lsn: int, *, transactional: bool = True) -> bytes:
    body = struct.pack(">BQ", 1 if transactional else 0, lsn) + cstring(prefix)
    return xlogdata(b"M" + body + struct.pack(">I", len(content)) + content)


def decoder(**options: str) -> StreamDecoder:
    return StreamDecoder(
        schema="public",
        table="outbox",
        slot_name="slot",
        message_topics=frozenset({"orders"}),
        **options,
    )


def feed(stream: StreamDecoder, *frames: bytes) -> list[WalTransaction]:
    out: list[WalTransaction] = []
    stream.feed(list(frames), out)
    return out


# --- StreamDecoder ----------------------------------------------------------------------


def test_outbox_inserts_become_events_of_their_transaction() -> None:
    stream = decoder()
    [transaction] = feed(
        stream,
        relation(),
        begin(0x1000),
        insert(outbox_row(1, "a")),
        insert(outbox_row(2, "b", payload=None)),
        commit(0x1000, 0x1030),
    )
    assert (transaction.commit_lsn, transaction.end_lsn) == (0x1000, 0x1030)
    assert transaction.commit_time == COMMIT_TIME
    first, second = transaction.events
    assert first.id == 1
    assert first.key == "a"
    assert first.topic == "orders"
    assert first.value == b'{"n":1,"s":"a b"}'
    assert first.lsn == 0x1000
    assert first.headers == (
        ("event_id", str(uuid.UUID(int=1)).encode()),
        ("event_type", b"Placed"),
        ("traceparent", b"00-abc"),
    )
    assert first.created_at == dt.datetime(2026, 11, 22, 11, 59, 59, 500000, tzinfo=dt.UTC)
    assert second.value == b"\x00\x01\x02"
    assert not stream.in_transaction


def test_rows_of_other_tables_and_rows_not_inserted_pending_are_not_events() -> None:
    stream = decoder()
    [transaction] = feed(
        stream,
        relation(),
        relation(OTHER_RELATION_ID, "audit"),
        begin(0x2000),
        insert(outbox_row(1), OTHER_RELATION_ID),
        insert(outbox_row(2, state="parked")),
        insert(outbox_row(3)),
        commit(0x2000, 0x2040),
    )
    assert [event.id for event in transaction.events] == [3]


def test_updates_deletes_and_truncates_of_the_outbox_are_never_published() -> None:
    stream = decoder()
    update = xlogdata(b"U" + struct.pack(">IB", RELATION_ID, ord("N")) + tuple_data([b"1"]))
    delete = xlogdata(b"D" + struct.pack(">IB", RELATION_ID, ord("K")) + tuple_data([b"1"]))
    truncate = xlogdata(b"T" + struct.pack(">IBI", 1, 0, RELATION_ID))
    [transaction] = feed(
        stream, relation(), begin(0x10), update, delete, truncate, commit(0x10, 0x20)
    )
    assert transaction.events == ()
    assert stream.truncated == 1


def test_a_table_without_outbox_columns_is_refused() -> None:
    with pytest.raises(WalSetupError, match="has no column payload"):
        feed(decoder(), relation(columns=("id", "event_id", "topic", "key")))


def test_keepalives_report_the_server_position_and_reply_requests() -> None:
    stream = decoder()
    feed(stream, keepalive(0x5000))
    assert stream.wal_end == 0x5000
    assert not stream.take_reply_request()
    feed(stream, keepalive(0x6000, reply=True))
    assert stream.take_reply_request()
    assert not stream.take_reply_request()
    assert stream.wal_end == 0x6000


def test_transactional_messages_with_the_prefix_become_events() -> None:
    stream = decoder(message_prefix="outbox")
    envelope = json.dumps({"topic": "orders", "key": "a", "payload": {"n": 1}}).encode()
    [transaction] = feed(
        stream,
        begin(0x3000),
        message("outbox", envelope, 0x2F00),
        message("other", envelope, 0x2F10),
        message("outbox-relay-heartbeat", b"", 0x2F20),
        commit(0x3000, 0x3050),
    )
    [event] = transaction.events
    assert (event.id, event.topic, event.key, event.value) == (0, "orders", "a", b'{"n":1}')
    assert event.event_id == message_event_id("slot", 0x2F00)
    assert event.lsn == 0x3000
    assert event.created_at == COMMIT_TIME


def test_messages_are_ignored_without_a_prefix_or_outside_transactions() -> None:
    envelope = json.dumps({"topic": "orders"}).encode()
    assert feed(decoder(), message("outbox", envelope, 1, transactional=True)) == []
    stream = decoder(message_prefix="outbox")
    feed(stream, message("outbox", envelope, 1, transactional=False))
    [transaction] = feed(stream, begin(0x10), commit(0x10, 0x20))
    assert transaction.events == ()


def test_an_unreadable_envelope_is_rejected_not_dropped() -> None:
    stream = decoder(message_prefix="outbox")
    [transaction] = feed(
        stream, begin(0x10), message("outbox", b"not json", 0x8), commit(0x10, 0x20)
    )
    assert transaction.events == ()
    [rejected] = transaction.rejected
    assert rejected.content == b"not json"
    assert rejected.event_id == message_event_id("slot", 0x8)
    assert "JSON" in rejected.reason


def test_topic_template_routes_streamed_rows() -> None:
    stream = decoder(topic_template="outbox.{event_type}")
    [transaction] = feed(stream, relation(), begin(1), insert(outbox_row(1)), commit(1, 2))
    assert transaction.events[0].topic == "outbox.Placed"


# --- Envelopes ------------------------------------------------------------------------


def envelope_event(content: object) -> OutboxEvent:
    return decode_envelope(
        json.dumps(content).encode(),
        lsn=0x100,
        commit_lsn=0x200,
        commit_time=COMMIT_TIME,
        slot_name="slot",
    )


def test_envelope_with_every_field() -> None:
    event_id = str(uuid.uuid4())
    event = envelope_event(
        {
            "topic": "orders",
            "key": "o-1",
            "payload_base64": base64.b64encode(b"\x00\xff").decode(),
            "headers": {"traceparent": "00-x", "retries": 2},
            "event_id": event_id,
            "event_type": "Placed",
            "aggregate_type": "order",
        }
    )
    assert event.value == b"\x00\xff"
    assert event.event_id == event_id
    assert event.headers == (
        ("event_id", event_id.encode()),
        ("event_type", b"Placed"),
        ("aggregate_type", b"order"),
        ("traceparent", b"00-x"),
        ("retries", b"2"),
    )


def test_envelope_without_payload_is_a_null_value_and_gets_a_stable_id() -> None:
    event = envelope_event({"topic": "orders"})
    assert event.value is None
    assert event.key is None
    assert event.event_id == message_event_id("slot", 0x100)
    assert event.event_id != message_event_id("slot", 0x101)
    assert event.event_id != message_event_id("other-slot", 0x100)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ([1, 2], "must be a JSON object"),
        ({"key": "a"}, "not a valid Kafka topic"),
        ({"topic": "bad topic"}, "not a valid Kafka topic"),
        ({"topic": "t", "key": 5}, "'key' must be a string"),
        ({"topic": "t", "event_id": "nope"}, "not a UUID"),
        ({"topic": "t", "payload": 1, "payload_base64": "AA=="}, "both payload"),
        ({"topic": "t", "payload_base64": "***"}, "not valid base64"),
        ({"topic": "t", "headers": [1]}, "headers must be a JSON object"),
    ],
)
def test_invalid_envelopes_say_why(content: object, error: str) -> None:
    with pytest.raises(EnvelopeError, match=error):
        envelope_event(content)


# --- AckTracker -----------------------------------------------------------------------


def test_confirms_only_a_prefix_of_done_transactions_in_commit_order() -> None:
    tracker = AckTracker(confirmed=0x10)
    tracker.add(0x100, 0x110, 2)
    tracker.add(0x200, 0x210, 1)
    tracker.add(0x300, 0x310, 0)  # no outbox events, e.g. a heartbeat
    tracker.done(0x200)
    assert tracker.confirmable() == 0x10  # 0x100 still has events in flight
    tracker.done(0x100)
    assert tracker.confirmable() == 0x10
    assert not tracker.idle
    tracker.done(0x100)
    assert tracker.confirmable() == 0x310
    assert tracker.idle


def test_idle_position_is_taken_only_with_nothing_open() -> None:
    tracker = AckTracker(confirmed=0x10)
    tracker.add(0x100, 0x110, 1)
    tracker.idle_position(0x900)
    assert tracker.confirmed == 0x10
    tracker.done(0x100)
    tracker.confirmable()
    tracker.idle_position(0x900)
    assert tracker.confirmed == 0x900
    tracker.idle_position(0x800)  # never backwards
    assert tracker.confirmed == 0x900


def test_events_of_unknown_transactions_do_not_count() -> None:
    tracker = AckTracker()
    tracker.add(0x100, 0x110, 1)
    tracker.done(0)  # a swept row
    tracker.done(0x999)  # a transaction from before a reconnect
    assert tracker.pending_events == 1
    tracker.done(0x100, 5)  # never below zero
    assert tracker.pending_events == 0
    assert tracker.confirmable() == 0x110


# --- Fetched events and rewind --------------------------------------------------------


def event(n: int) -> OutboxEvent:
    return OutboxEvent(id=n, event_id=str(n), topic="t", key="k", value=None, headers=())


def test_unsettled_events_come_back_in_fetch_order_with_their_attempts() -> None:
    fetched = _Fetched()
    events = [event(n) for n in range(1, 6)]
    fetched.events.extend(events)
    fetched.settled.update({id(events[0]), id(events[2])})
    fetched.replaced[id(events[1])] = OutboxEvent(
        id=2, event_id="2", topic="t", key="k", value=None, headers=(), attempts=1
    )
    fetched.prune()
    assert [e.id for e in fetched.events] == [2, 3, 4, 5]
    unsettled = fetched.unsettled()
    assert [e.id for e in unsettled] == [2, 4, 5]
    assert unsettled[0].attempts == 1


def test_relation_shape_follows_column_positions() -> None:
    columns = tuple(
        Column(name, 25, -1, is_key=False) for name in ("extra", *reversed(OUTBOX_COLUMNS))
    )
    shaped = Relation(None, 1, "public", "outbox", ReplicaIdentity.DEFAULT, columns)
    shape = OutboxShape.of(shaped)
    assert shape.positions[0] == len(OUTBOX_COLUMNS)  # id is the last column here


def test_a_transaction_carries_its_xid_for_the_hand_over() -> None:
    stream = decoder()
    [transaction] = feed(
        stream,
        relation(),
        begin(1, xid=4242),
        insert(outbox_row(1)),
        insert(outbox_row(2)),
        commit(1, 2),
    )
    assert transaction.xid == 4242
    assert [event.id for event in transaction.events] == [1, 2]


def test_columns_after_the_ones_the_relay_reads_are_not_decoded() -> None:
    stream = decoder()
    columns = (*OUTBOX_COLUMNS, "sent_at", "last_error")
    row = outbox_row(5)
    values = [row[name] for name in OUTBOX_COLUMNS] + [None, b"boom"]
    frame = xlogdata(b"I" + struct.pack(">IB", RELATION_ID, ord("N")) + tuple_data(values))
    [transaction] = feed(stream, relation(columns=columns), begin(1), frame, commit(1, 2))
    assert [event.id for event in transaction.events] == [5]


def test_a_truncated_insert_is_an_error_not_a_wrong_event() -> None:
    stream = decoder()
    frame = insert(outbox_row(1))
    with pytest.raises(PgOutputError, match="truncated"):
        feed(stream, relation(), begin(1), frame[:-20])


def test_inserts_of_a_transaction_the_sweep_saw_are_skipped_undecoded() -> None:
    stream = decoder()
    stream.handovers = [HandOver(Snapshot.parse("600:750:"), horizon=10_000)]
    transactions = feed(
        stream,
        relation(),
        begin(1, xid=700),  # the sweep's snapshot saw it: its rows are the sweep's
        insert(outbox_row(1)),
        commit(1, 2),
        begin(3, xid=760),  # it did not: the stream's
        insert(outbox_row(2)),
        commit(3, 4),
    )
    assert [[event.id for event in t.events] for t in transactions] == [[], [2]]


def test_a_message_to_a_topic_outside_the_allow_list_is_rejected_with_the_reason() -> None:
    stream = decoder(message_prefix="outbox")
    envelope = json.dumps({"topic": "payments", "key": "a", "payload": {"n": 1}}).encode()
    [transaction] = feed(stream, begin(1), message("outbox", envelope, 1), commit(1, 2))
    assert transaction.events == ()
    [rejected] = transaction.rejected
    assert "'payments' is not in message_topics" in rejected.reason
    assert rejected.content == envelope
