from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from collections.abc import Mapping
from typing import Any

import pytest

from relay.errors import ConfigError, InvalidEventError
from relay.producer import (
    MAX_HEADERS,
    MAX_HEADERS_BYTES,
    MAX_KEY_BYTES,
    Event,
    Outbox,
    check_topic,
    encode_payload,
)

LIMIT = 1_000_000


@pytest.mark.parametrize(
    "topic", ["orders", "a", "Orders.v2_created-eu", "x" * 249, "...", "_", "-.-"]
)
def test_topics_kafka_accepts_are_accepted(topic: str) -> None:
    check_topic(topic)
    assert Event(topic, {}).topic == topic


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("", "topic is empty"),
        (".", "not allowed by Kafka"),
        ("..", "not allowed by Kafka"),
        ("x" * 250, "250 characters long; Kafka allows at most 249"),
        ("bad topic", "contains ' '; Kafka allows only letters, digits"),
        ("orders/eu", "contains '/'"),
        ("ordérs", "contains 'é'"),
        ("a\x00b", "contains '\\x00'"),
    ],
)
def test_topics_kafka_rejects_raise_invalid_event_error(topic: str, message: str) -> None:
    with pytest.raises(InvalidEventError, match="topic") as caught:
        Event(topic, {})
    assert message in str(caught.value)


def test_a_topic_that_is_not_a_string_is_rejected() -> None:
    with pytest.raises(InvalidEventError, match="topic must be a str, not int"):
        Event(42, {})  # type: ignore[arg-type]


def test_json_payload_is_written_compactly() -> None:
    payload, payload_bytes = encode_payload({"id": 1, "items": [1.5, "é", None, True]}, LIMIT)
    assert payload == '{"id":1,"items":[1.5,"é",null,true]}'
    assert payload_bytes is None


def test_bytes_payload_goes_to_payload_bytes_unchanged() -> None:
    assert encode_payload(b"\x00\xffavro", LIMIT) == (None, b"\x00\xffavro")
    assert encode_payload(bytearray(b"ab"), LIMIT) == (None, b"ab")


def test_none_payload_writes_neither_column_a_tombstone() -> None:
    assert encode_payload(None, LIMIT) == (None, None)


def test_other_mappings_and_tuples_are_written_as_objects_and_arrays() -> None:
    class Frozen(Mapping[str, int]):
        def __getitem__(self, key: str) -> int:
            return {"a": 1}[key]

        def __iter__(self) -> Any:
            return iter(["a"])

        def __len__(self) -> int:
            return 1

    payload, _ = encode_payload({"m": Frozen(), "t": (1, 2)}, LIMIT)
    assert payload is not None
    assert json.loads(payload) == {"m": {"a": 1}, "t": [1, 2]}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"at": dt.datetime(2024, 1, 1, tzinfo=dt.UTC)}, r"payload\['at'\] is a datetime"),
        ({"price": decimal.Decimal("1.5")}, r"payload\['price'\] is a Decimal"),
        ([1, {2, 3}], r"payload\[1\] is a set"),
        ({"raw": b"x"}, "bytes only as the whole payload"),
        ({1: "a"}, "payload has the key 1 \\(int\\); JSON keys are strings"),
        ({"x": float("nan")}, "payload\\['x'\\] is nan"),
        ([float("inf")], "is inf"),
        ({"s": "a\x00b"}, "NUL character"),
        ({"s": "\ud800"}, "lone surrogate"),
        (object(), "payload is a object"),
    ],
)
def test_payloads_json_cannot_hold_raise_naming_the_place(payload: object, message: str) -> None:
    with pytest.raises(InvalidEventError, match=message):
        encode_payload(payload, LIMIT)


def test_a_payload_that_contains_itself_is_rejected() -> None:
    payload: dict[str, object] = {}
    payload["self"] = payload
    with pytest.raises(InvalidEventError, match="nested deeper than 100 levels"):
        encode_payload(payload, LIMIT)


def test_the_size_limit_counts_what_the_check_counts() -> None:
    # jsonb's text form ('{"k": "v"}') is what the CHECK measures: 2 spaces more than compact.
    value = "x" * 10
    size = len(json.dumps({"k": value}))
    encode_payload({"k": value}, size)
    with pytest.raises(InvalidEventError, match=f"payload is {size} bytes as JSON, more than"):
        encode_payload({"k": value}, size - 1)


def test_the_size_limit_counts_utf8_bytes_not_characters() -> None:
    with pytest.raises(InvalidEventError, match="payload is 8 bytes as JSON"):
        encode_payload("ééé", 7)


def test_oversize_bytes_payload_is_rejected() -> None:
    with pytest.raises(InvalidEventError, match=r"payload is 11 bytes, more than .* limit of 10"):
        encode_payload(b"x" * 11, 10)


def test_oversize_payload_is_rejected_by_outbox_before_any_sql() -> None:
    # No connection is touched: the check runs before the statement is built.
    with pytest.raises(InvalidEventError, match="max_payload_bytes"):
        Outbox(max_payload_bytes=100).publish_many(object(), [Event("t", "x" * 200)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"n": 1}, "header 'n' must have a str value, not int"),
        ({"n": b"x"}, "header 'n' must have a str value, not bytes"),
        ({1: "x"}, "header name 1 must be a non-empty str"),
        ({"": "x"}, "header name '' must be a non-empty str"),
        ({"event_id": "x"}, "header 'event_id' is set by the relay"),
        ([("a", "b")], "headers must be a mapping of str to str, not list"),
        ({"a": "b\x00"}, "NUL character"),
    ],
)
def test_headers_must_map_str_to_str(headers: object, message: str) -> None:
    with pytest.raises(InvalidEventError, match="header") as caught:
        Event("t", {}, headers=headers)  # type: ignore[arg-type]
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("key", 42, "key must be a str or None, not int"),
        ("key", "a\x00", "key contains a NUL character"),
        ("event_type", 1, "event_type must be a str or None"),
        ("aggregate_type", b"x", "aggregate_type must be a str or None, not bytes"),
        ("event_id", "3f1d0c1e-5b8e-4f34-9a51-0c1f0a1b2c3d", "event_id must be a uuid.UUID"),
    ],
)
def test_key_types_and_event_id_are_checked(field: str, value: object, message: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        Event("t", {}, **{field: value})  # type: ignore[arg-type]
    assert message in str(caught.value)


def test_a_valid_event_keeps_its_fields() -> None:
    event_id = uuid.uuid4()
    event = Event(
        "orders",
        {"id": 1},
        key="1",
        headers={"traceparent": "00-abc"},
        event_type="OrderPlaced",
        aggregate_type="order",
        event_id=event_id,
    )
    assert (event.key, event.event_id, event.headers) == ("1", event_id, {"traceparent": "00-abc"})


def test_an_invalid_event_error_is_a_value_error() -> None:
    # Callers who catch ValueError for bad input catch ours too.
    with pytest.raises(ValueError, match="topic is empty"):
        Event("", {})


@pytest.mark.parametrize(("schema", "table"), [("public", "bad name"), ("x;drop", "outbox")])
def test_outbox_names_must_be_plain_sql_names(schema: str, table: str) -> None:
    with pytest.raises(ConfigError, match="invalid outbox"):
        Outbox(schema, table)


# Limits besides the payload (the CHECKs of migrations/0002_event_limits.sql).


def _headers_of_size(size: int) -> dict[str, str]:
    """One header whose jsonb text form, {"h": "..."}, is `size` bytes."""
    return {"h": "x" * (size - len('{"h": ""}'))}


def test_the_largest_key_headers_and_header_count_are_accepted() -> None:
    Event("t", {}, key="é" * (MAX_KEY_BYTES // 2))
    Event("t", {}, headers={f"h{n}": "v" for n in range(MAX_HEADERS)})
    Event("t", {}, headers=_headers_of_size(MAX_HEADERS_BYTES))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"key": "k" * (MAX_KEY_BYTES + 1)}, "is 1025 bytes long; the outbox allows at most 1024"),
        # Bytes, not characters: 513 two-byte characters are 1026 bytes.
        ({"key": "é" * 513}, "is 1026 bytes long; the outbox allows at most 1024"),
        (
            {"headers": {f"h{n}": "v" for n in range(MAX_HEADERS + 1)}},
            "event has 65 headers; the outbox allows at most 64",
        ),
        (
            {"headers": _headers_of_size(MAX_HEADERS_BYTES + 1)},
            "headers are 65537 bytes as JSON; the outbox allows at most 65536",
        ),
        # A 10 MB header, as in the issue.
        ({"headers": {"h": "x" * 10_000_000}}, "the outbox allows at most 65536"),
        # Escapes count as jsonb writes them: a newline is two bytes, \u001b six.
        (
            {"headers": {"h": "\x1b" * (MAX_HEADERS_BYTES // 6)}},
            "the outbox allows at most 65536",
        ),
    ],
)
def test_keys_and_headers_beyond_the_limits_raise_invalid_event_error(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidEventError) as caught:
        Event("t", {}, **fields)
    assert message in str(caught.value)
