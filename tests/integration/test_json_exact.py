"""JSON payloads reach Kafka as PostgreSQL's jsonb text without its whitespace, byte for byte."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from relay import decisions
from relay._embedded import EmbeddedBroker, EmbeddedPostgres
from relay.config import Settings
from tests.integration.poll_stack import all_sent, async_wait_until, relay_in_process
from tests.integration.relay_pair import RelayPair, expected_headers, relay_pair, tokens
from tests.support import consume


def _number(sign: str, whole: str, fraction: str, exponent: str) -> str:
    return sign + whole + (f".{fraction}" if fraction else "") + exponent


#: Number texts as a service writes them: big and precise decimals, trailing zeros, exponents.
numbers = st.builds(
    _number,
    st.sampled_from(["", "-"]),
    st.one_of(st.just("0"), st.from_regex(r"[1-9][0-9]{0,40}", fullmatch=True)),
    st.one_of(st.just(""), st.from_regex(r"[0-9]{1,40}", fullmatch=True)),
    st.one_of(st.just(""), st.from_regex(r"[eE][-+]?[0-9]{1,2}", fullmatch=True)),
)
#: Any text jsonb stores (not NUL), astral characters and controls included.
texts = st.text(
    st.characters(
        categories=("L", "M", "N", "P", "S", "Z", "Cc", "Cf", "Co"), exclude_characters="\x00"
    ),
    max_size=30,
)
strings = st.builds(
    lambda text, ascii_only: json.dumps(text, ensure_ascii=ascii_only), texts, st.booleans()
)
scalars = st.one_of(numbers, strings, st.sampled_from(["true", "false", "null"]))
spaces = st.sampled_from(["", " ", "  ", "\n", "\t "])


def _array(items: list[str]) -> str:
    return "[" + ", ".join(items) + "]"


def _object(items: list[tuple[str, str, str]]) -> str:
    return "{" + ",".join(f"{gap}{key}{gap}:{gap}{value}" for key, value, gap in items) + "}"


json_texts = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5).map(_array),
        st.lists(st.tuples(strings, inner, spaces), max_size=5).map(_object),
    ),
    max_leaves=30,
)


@hypothesis_settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=json_texts)
def test_compact_json_is_jsonb_text_without_whitespace_token_for_token(
    database_url: str, text: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT %s::jsonb::text", (text,)).fetchone()
    assert row is not None
    jsonb_text: str = row[0]
    compact = decisions.compact_json(jsonb_text)
    assert decisions.compact_json_bytes(jsonb_text.encode()) == compact
    assert compact.decode() == "".join(tokens(jsonb_text))
    assert tokens(compact.decode()) == tokens(jsonb_text)


def test_deep_but_legal_nesting_compacts_exactly(database_url: str) -> None:
    text = '{"a": ' * 200 + '[1.50, "x\\"y"]' + "}" * 200
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT %s::jsonb::text", (text,)).fetchone()
    assert row is not None
    assert decisions.compact_json(row[0]).decode() == "".join(tokens(row[0]))


PAYLOAD = '{"amount": 42.50, "note": "a\\"b", "big": 12345678901234567890.123456789}'


async def test_poll_mode_relays_numbers_and_escapes_byte_exact(
    settings: Settings, topic: str
) -> None:
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("SELECT outbox_publish(%s, 'order-1', %s::jsonb)", (topic, PAYLOAD))
        row = conn.execute("SELECT payload::text FROM outbox").fetchone()
    assert row is not None
    async with relay_in_process(settings):
        await async_wait_until("sent", all_sent(settings.database_url, 1))
    records = await consume(settings.bootstrap_servers, [topic], expected=1)
    assert [r.value for r in records] == [
        b'{"big":12345678901234567890.123456789,"note":"a\\"b","amount":42.50}'
    ]
    assert records[0].value == "".join(tokens(row[0])).encode()


# --- Both modes, through real relays ---------------------------------------------------

#: Header names: any text jsonb stores, controls included, but not the relay's own.
header_names = texts.filter(lambda name: name != "event_id")
#: A headers object as a service writes it: strings mostly, and any other JSON value.
header_objects = st.lists(
    st.tuples(header_names.map(json.dumps), st.one_of(strings, json_texts)),
    max_size=6,
    unique_by=lambda member: member[0],
).map(lambda members: "{" + ", ".join(f"{name}: {value}" for name, value in members) + "}")


@pytest.fixture(scope="module")
def pair(
    postgres: EmbeddedPostgres, broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RelayPair]:
    with relay_pair(postgres, broker, tmp_path_factory.mktemp("pair")) as running:
        yield running


@hypothesis_settings(max_examples=30, deadline=None)
@example(
    payload='{"amount": 42.50, "big": 12345678901234567890.123456789, "e": 1E+2, "q": "a\\"b"}',
    headers='{"amount": 42.50, "note": "a\\"b\\u00e9", "tags": [1.0, {"x": 0.1000}], "n": null}',
)
@given(payload=json_texts, headers=header_objects)
def test_both_modes_relay_jsonb_text_token_for_token_and_headers_byte_exact(
    pair: RelayPair, payload: str, headers: str
) -> None:
    written = pair.write("SELECT %s, 'k', %s::jsonb, NULL::bytea, %s::jsonb", payload, headers)
    with psycopg.connect(pair.database_url) as conn:
        [(jsonb_text,)] = conn.execute("SELECT %s::jsonb::text", (payload,)).fetchall()
    for row in written:
        record = pair.record(row)
        assert record.value == "".join(tokens(jsonb_text)).encode(), row.mode
        assert tokens(record.value.decode()) == tokens(jsonb_text)
        assert pair.headers(row) == expected_headers(pair.database_url, row), row.mode
