from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from relay import decisions, poll
from relay.decisions import ErrorKind
from relay.events import OutboxEvent, PublishFailure, PublishResult
from relay.testing import make_event

# -- backoff -------------------------------------------------------------------------------


def test_backoff_doubles_from_the_base_and_stops_at_the_cap() -> None:
    no_jitter = [decisions.backoff_s(n, lambda: 1.0, base_s=0.1, max_s=2.0) for n in range(1, 8)]
    assert no_jitter == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])


def test_backoff_jitter_stays_within_the_upper_half() -> None:
    low = decisions.backoff_s(4, lambda: 0.0, base_s=0.1, max_s=10)
    high = decisions.backoff_s(4, lambda: 0.999, base_s=0.1, max_s=10)
    assert low == pytest.approx(0.4)
    assert 0.79 < high < 0.8


def test_no_failure_means_no_wait_and_huge_counts_do_not_overflow() -> None:
    assert decisions.backoff_s(0, lambda: 0.5) == 0
    assert decisions.backoff_s(10_000, lambda: 1.0) == decisions.BACKOFF_MAX_S


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("MessageSizeTooLargeError", ErrorKind.RECORD),
        ("CorruptRecordException", ErrorKind.RECORD),
        ("TopicAuthorizationFailedError", ErrorKind.TOPIC),
        ("InvalidTopicError", ErrorKind.TOPIC),
        ("KafkaTimeoutError", ErrorKind.RETRIABLE),
        ("KafkaConnectionError", ErrorKind.RETRIABLE),
        ("NotLeaderForPartitionError", ErrorKind.RETRIABLE),
        # Not the event's fault: parking everything would be worse than waiting.
        ("SaslAuthenticationFailed", ErrorKind.RETRIABLE),
        ("SomethingNew", ErrorKind.RETRIABLE),
    ],
)
def test_error_kinds(name: str, kind: ErrorKind) -> None:
    assert decisions.error_kind(name) is kind


def test_a_record_error_charges_only_the_first_record_of_the_batch() -> None:
    failures = decisions.batch_failures(3, "MessageSizeTooLargeError: too big", ErrorKind.RECORD)
    assert [f.retriable for f in failures] == [False, True, True]
    assert failures[0].error == "MessageSizeTooLargeError: too big"


def test_topic_errors_charge_everyone_and_retriable_errors_nobody() -> None:
    topic = decisions.batch_failures(2, "TopicAuthorizationFailedError", ErrorKind.TOPIC)
    retriable = decisions.batch_failures(2, "KafkaTimeoutError", ErrorKind.RETRIABLE)
    assert [f.retriable for f in topic] == [False, False]
    assert [f.retriable for f in retriable] == [True, True]


# -- settle --------------------------------------------------------------------------------

RETRY = PublishFailure("KafkaTimeoutError", retriable=True)
POISON = PublishFailure("MessageSizeTooLargeError", retriable=False)


def test_acknowledged_events_are_sent() -> None:
    events = (make_event(1), make_event(2, key="b"))
    ack = decisions.settle(PublishResult(events, (None, None)), park_after_attempts=5)
    assert ack.sent == events
    assert ack.complete


def test_a_failed_event_holds_back_later_events_of_its_key_even_when_acknowledged() -> None:
    e1, e2, e3, e4 = make_event(1, "a"), make_event(2, "b"), make_event(3, "a"), make_event(4, "b")
    ack = decisions.settle(PublishResult((e1, e2, e3, e4), (RETRY, None, None, None)), 5)
    assert ack.sent == (e2, e4)
    assert ack.unsettled == (e1, e3)
    assert ack.failed == ()
    assert not ack.complete


def test_the_same_key_on_another_topic_is_held_back_and_null_keys_are_not() -> None:
    failed = make_event(1, "a", topic="t1")
    other_topic = make_event(2, "a", topic="t2")
    null_failed, null_later = make_event(3, None), make_event(4, None)
    result = PublishResult(
        (failed, other_topic, null_failed, null_later), (RETRY, None, RETRY, None)
    )
    ack = decisions.settle(result, 5)
    assert ack.sent == (null_later,)
    assert ack.unsettled == (failed, other_topic, null_failed)


def test_permanent_failures_count_attempts_and_park_at_the_threshold() -> None:
    young, old = make_event(1, "a", attempts=0), make_event(2, "b", attempts=2)
    ack = decisions.settle(PublishResult((young, old), (POISON, POISON)), park_after_attempts=3)
    assert [(f.event, f.attempts, f.park) for f in ack.failed] == [
        (young, 1, False),
        (old, 3, True),
    ]
    assert len(ack) == 2


def test_retriable_failures_are_never_charged() -> None:
    event = make_event(1, attempts=4)
    ack = decisions.settle(PublishResult((event,), (RETRY,)), park_after_attempts=5)
    assert ack.failed == ()
    assert ack.unsettled == (event,)


def test_key_hold() -> None:
    hold = decisions.KeyHold()
    hold.block(make_event(1, "a"))
    hold.block(make_event(2, None))
    assert hold.holds(make_event(3, "a"))
    assert hold.holds(make_event(4, "a", topic="other"))
    assert not hold.holds(make_event(5, None))


# -- partitions ----------------------------------------------------------------------------

# Kafka's own test vectors (UtilsTest.testMurmur2), as signed 32-bit Java ints.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("data", "expected"), JAVA_MURMUR2.items())
def test_murmur2_matches_the_java_client(data: bytes, expected: int) -> None:
    assert decisions.murmur2(data) == expected & 0xFFFFFFFF


def test_partition_matches_aiokafkas_default_partitioner() -> None:
    partitioner = DefaultPartitioner()
    for length in range(64):
        key = os.urandom(length)
        for count in (1, 3, 12):
            expected = partitioner(key, list(range(count)), list(range(count)))
            assert decisions.partition_for(key, count) == expected


# -- records -------------------------------------------------------------------------------


def jsonb_text(value: object) -> str:
    """What PostgreSQL prints for a jsonb value (one space after , and :)."""
    return json.dumps(value, separators=(", ", ": "), ensure_ascii=False)


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1, "b": [1, 2.5, None, True], "c": {"d": "x"}},
        {"text": "spaces , and : inside strings stay", "empty": ""},
        {"quote": 'say "hi"', "backslash": "a\\b", "newline": "a\nb"},
        {"unicode": "naïve 東京 🎉"},
        [1, "two", {"3": []}],
        "just a string, with: punctuation",
        42,
        None,
    ],
)
def test_compact_json_equals_a_compact_dump(value: object) -> None:
    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    assert decisions.compact_json(jsonb_text(value)) == expected
    assert decisions.compact_json_bytes(jsonb_text(value).encode()) == expected


@pytest.mark.parametrize(
    ("text", "compact"),
    [
        ('{"a": "x\\\\", "b": [1, 2]}', '{"a":"x\\\\","b":[1,2]}'),
        ('["\\\\\\"", " , : "]', '["\\\\\\""," , : "]'),
        ('{"k \\" ": 1.0e+2}', '{"k \\" ":1.0e+2}'),
        ('"\\u0000 raw \x00 control"', '"\\u0000 raw \x00 control"'),
    ],
)
def test_escaped_backslashes_and_quotes_keep_their_strings(text: str, compact: str) -> None:
    assert decisions.compact_json(text) == compact.encode()
    assert decisions.compact_json_bytes(text.encode()) == compact.encode()


def test_ids_become_one_bigint_array_literal() -> None:
    assert decisions.id_array([1, 22, 9_007_199_254_740_993]) == "{1,22,9007199254740993}"
    assert decisions.id_array([]) == "{}"


def test_an_event_built_through_its_slots_equals_one_built_by_init() -> None:
    created = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    fields = (7, "e-7", "orders", "k", b"{}", (("event_id", b"e-7"),), created, 2, 99)
    built = decisions.new_event(*fields)
    assert built == OutboxEvent(*fields)
    assert hash(built) == hash(OutboxEvent(*fields))
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.id = 8  # type: ignore[misc]


def test_headers_carry_the_event_id_the_types_and_the_rows_own() -> None:
    headers = decisions.kafka_headers(
        "e-1",
        "OrderPlaced",
        "order",
        {"traceparent": "00-abc-def-01", "retry": 3, "event_id": "forged", "gone": None},
    )
    assert headers == (
        ("event_id", b"e-1"),
        ("event_type", b"OrderPlaced"),
        ("aggregate_type", b"order"),
        ("traceparent", b"00-abc-def-01"),
        ("retry", b"3"),
    )


def test_headers_without_optional_fields() -> None:
    assert decisions.kafka_headers("e-1", None, None, None) == (("event_id", b"e-1"),)


def test_topic_routing() -> None:
    assert decisions.route_topic("", "orders", "Placed", "order") == "orders"
    assert decisions.route_topic("outbox.{aggregate_type}", "x", None, "order") == "outbox.order"
    assert decisions.route_topic("{topic}.{event_type}", "orders", "Placed", None) == (
        "orders.Placed"
    )
    # A NULL field falls back to the row's topic instead of building "outbox.".
    assert decisions.route_topic("outbox.{aggregate_type}", "orders", "Placed", None) == "orders"


def test_valid_topics() -> None:
    assert decisions.valid_topic("orders.v1_x-y")
    assert not decisions.valid_topic("with space")
    assert not decisions.valid_topic("..")
    assert not decisions.valid_topic("x" * 250)


def test_lock_ids_are_stable_signed_64_bit_and_distinct_per_outbox() -> None:
    first = decisions.lock_id_for("public", "outbox")
    assert first == decisions.lock_id_for("public", "outbox")
    assert -(2**63) <= first < 2**63
    assert first != decisions.lock_id_for("public", "outbox2")
    assert first != decisions.lock_id_for("events", "outbox")


def test_row_headers_are_the_jsonb_values_byte_for_byte() -> None:
    text = (
        '{"n": 42.50, "s": "a\\"b\\u00e9\\n", "t": true, "z": null, "big": 1e+400, '
        '"o": {"k": [1.0, "}]", {"x": -0.0}]}, "u": "\U0001f600"}'
    )
    assert decisions.row_headers(text) == {
        "n": b"42.50",
        "s": 'a"b\u00e9\n'.encode(),
        "t": b"true",
        "big": b"1e+400",
        "o": b'{"k":[1.0,"}]",{"x":-0.0}]}',
        "u": "\U0001f600".encode(),
    }
    assert decisions.row_headers('{"traceparent": "00-a"}') == {"traceparent": b"00-a"}
    assert decisions.row_headers("{}") == {}


@pytest.mark.parametrize("text", ["[1, 2]", '"x"', '{"a": 1', '{"a" 1}', '{"a": 1} x', ""])
def test_row_headers_refuse_what_is_not_a_json_object(text: str) -> None:
    with pytest.raises(ValueError, match="JSON object"):
        decisions.row_headers(text)


def test_headers_python_cannot_decode_are_relayed_exactly() -> None:
    deep = '{"h": ' * 1500 + "1" + "}" * 1500
    huge = '{"n": ' + "7" * 5000 + ', "q": "\\""}'
    for headers, name, value in [
        (deep, "h", deep[6:-1].replace(" ", "").encode()),
        (huge, "n", b"7" * 5000),
    ]:
        row = (0, 0, 41, "e-41", "orders", "k", '{"a": 1}', None, headers, None, None, CREATED, 2)
        event = poll.event_from_row(row, "")
        assert isinstance(event, OutboxEvent)
        assert dict(event.headers)[name] == value


CREATED = "2026-01-02 03:04:05.123456+00"


@pytest.mark.parametrize("created_at", ["infinity", "-infinity", "12026-01-02 03:04:05+00"])
def test_a_row_python_has_no_datetime_for_becomes_a_reason_not_an_error(created_at: str) -> None:
    row = (0, 0, 41, "e-41", "orders", "k", '{"a": 1}', None, "{}", None, None, created_at, 2)
    item = poll.event_from_row(row, "")
    assert isinstance(item, decisions.Unreadable)
    assert (item.id, item.key, item.attempts) == (41, "k", 2)
    assert decisions.error_class(item.reason) == decisions.UNREADABLE


# -- topics a metadata answer refused --------------------------------------------------------


class RefusedTopicsMachine(RuleBasedStateMachine):
    """Metadata answers and a clock moving on, against a model of plain dicts.

    The model: a refusal lasts `TTL_S` from its answer; an unknown topic whose creation
    was asked for is retriable (not charged) for `GRACE_S` from its first such answer, a
    topic answered fine forgets that; a refusal starts a new grace afterwards.
    """

    TTL_S = 10.0
    GRACE_S = 5.0

    def __init__(self) -> None:
        super().__init__()
        self.refused = decisions.RefusedTopics(self.TTL_S, self.GRACE_S)
        self.now = 0.0
        self.expiry: dict[str, float] = {}
        self.creating_since: dict[str, float] = {}

    @rule(
        topic=st.sampled_from(["a", "b"]),
        code=st.sampled_from([0, 3, 5, 17, 29]),
        auto_create=st.booleans(),
    )
    def answer(self, topic: str, code: int, auto_create: bool) -> None:  # noqa: FBT001
        failure = self.refused.answered(
            topic, code, f"E{code}", auto_create=auto_create, now=self.now
        )
        if code in {0, 5}:
            assert failure is None
            self.creating_since.pop(topic, None)
            return
        assert failure is not None
        if code == 3 and auto_create:
            since = self.creating_since.setdefault(topic, self.now)
            if self.now - since < self.GRACE_S:
                assert failure.retriable
                assert "does not exist yet" in failure.error
                return
        assert not failure.retriable
        self.creating_since.pop(topic, None)
        self.expiry[topic] = self.now + self.TTL_S

    @rule(seconds=st.floats(0, 12, allow_nan=False))
    def wait(self, seconds: float) -> None:
        self.now += seconds

    @rule(topic=st.sampled_from(["a", "b"]))
    def look_up(self, topic: str) -> None:
        refused = self.now < self.expiry.get(topic, 0.0)
        failure = self.refused.refusal(topic, self.now)
        assert (failure is not None) is refused
        assert failure is None or not failure.retriable


TestRefusedTopics = RefusedTopicsMachine.TestCase
TestRefusedTopics.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)


@pytest.mark.parametrize("code", [0, 5, 7])
def test_codes_that_do_not_refuse_a_topic_leave_it_to_the_producer(code: int) -> None:
    assert decisions.refused_topic("t", code, "E", auto_create=True) is None


def test_a_poll_row_created_at_is_read_from_its_text() -> None:
    row = (0, 0, 41, "e-41", "orders", "k", '{"a": 1}', None, "{}", None, None, CREATED, 2)
    event = poll.event_from_row(row, "")
    assert isinstance(event, OutboxEvent)
    assert event.created_at == dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC)
