"""Rows as a hostile or unlucky service writes them never crash the relay or the CLI."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import hypothesis
import psycopg
import psycopg.errors
import pytest
from click.testing import CliRunner
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from relay._embedded import EmbeddedBroker, EmbeddedPostgres
from relay.cli import main as cli_main
from relay.config import Settings
from tests.integration.poll_stack import async_wait_until, relay_in_process, states
from tests.integration.relay_pair import (
    TABLES,
    RelayPair,
    Written,
    expected_headers,
    relay_pair,
    tokens,
)


async def test_rows_the_poll_fetch_parks_count_in_the_parked_metric(
    settings: Settings, topic: str
) -> None:
    url = settings.database_url
    with psycopg.connect(url) as conn:
        # A creation time Python has no datetime for (only the relay's own role, or the
        # owner, may set created_at): the fetch parks the row instead of failing.
        conn.execute(
            "INSERT INTO outbox (topic, key, payload, created_at) "
            "VALUES (%s, 'k', '{}', 'infinity')",
            (topic,),
        )
    async with relay_in_process(settings) as relay:
        await async_wait_until("parked", lambda: states(url).get("parked", 0) == 1, 30)
        parked = relay.metrics.registry.get_sample_value(
            "outbox_relay_events_parked_total", {"topic": topic}
        )
    assert parked == 1


# --- Random rows through both sources and the CLI ------------------------------------

#: Text as services write it: any character PostgreSQL text holds (not NUL), astral and
#: control characters included.
texts = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=40)
#: Number texts: big and precise decimals, exponents, more digits than Python converts.
numbers = st.one_of(
    st.from_regex(r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,30})?([eE][-+]?[0-9]{1,3})?", fullmatch=True),
    st.integers(4300, 6000).map(lambda digits: "9" * digits),
)
scalars = st.one_of(
    numbers, texts.map(json.dumps), st.sampled_from(["true", "false", "null", '""'])
)


def _nested(depth: int, leaf: str) -> str:
    return '{"d": [' * depth + leaf + "]}" * depth


json_values = st.one_of(
    st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4).map(lambda items: "[" + ", ".join(items) + "]"),
            st.lists(st.tuples(texts.map(json.dumps), inner), max_size=4).map(
                lambda members: "{" + ", ".join(f"{k}: {v}" for k, v in members) + "}"
            ),
        ),
        max_leaves=12,
    ),
    # Deep but legal nesting, deeper than Python's JSON decoder goes.
    st.builds(_nested, st.integers(900, 1500), scalars),
)
#: Strings large enough to reach the headers' size limit (65536 bytes as jsonb text).
huge_strings = st.builds(
    lambda n, c: json.dumps(c * n), st.integers(1000, 20_000), st.sampled_from("xé😀\n\x01")
)
header_objects = st.lists(
    st.tuples(texts.map(json.dumps), st.one_of(json_values, huge_strings)), max_size=8
).map(lambda members: "{" + ", ".join(f"{k}: {v}" for k, v in members) + "}")
#: Raw payloads: NUL, invalid UTF-8, anything (the sizes at the limits: `@example`s).
raw_payloads = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"\x00", b"\xff\xfe\xfd", b"\xc3\x28", b"\xed\xa0\x80", b"\x00" * 70_000]),
)
keys = st.one_of(st.none(), texts, st.builds(lambda n: "k" * n, st.integers(990, 1025)))
payloads = st.one_of(
    st.tuples(json_values, st.none()), st.tuples(st.none(), raw_payloads), st.just((None, None))
)
_examples = itertools.count()


@pytest.fixture(scope="module")
def pair(
    postgres: EmbeddedPostgres, broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RelayPair]:
    with relay_pair(postgres, broker, tmp_path_factory.mktemp("fuzz")) as running:
        yield running


def cli(pair: RelayPair, row: Written, *args: str) -> str:
    """Run an ``outbox-relay`` command on `row`'s table in this process; its output."""
    result = CliRunner().invoke(
        cli_main,
        [*args, "--database-url", pair.database_url, "--table", TABLES[row.mode]],
        catch_exceptions=True,
    )
    assert result.exception is None or (
        isinstance(result.exception, SystemExit) and result.exit_code == 0
    ), f"{args} crashed on {row}: {result.exception!r}\n{result.output}"
    assert result.exit_code == 0, result.output
    return result.stdout


#: At the limits: a payload of the outbox's largest size (1 MB, its CHECK) with headers of
#: their largest (64 KiB) makes a record over the producer's 1 MiB: parked, in both modes.
LARGEST_PAYLOAD = b"\xff" * 1_000_000
LARGEST_HEADERS = '{"h": "' + "x" * 65_000 + '"}'


@hypothesis_settings(max_examples=20, deadline=None)
@example(
    key="largest",
    payload=(None, LARGEST_PAYLOAD),
    headers=LARGEST_HEADERS,
    event_type=None,
    aggregate_type=None,
)
@example(
    key="x",
    payload=('{"n": 1.50, "h": ' + "9" * 5000 + "}", None),
    headers='{"\\u0001\\n": [1.0, {"x": 0.10}], "z": null, "e": 1E+2}',
    event_type="\u2028",
    aggregate_type="",
)
@example(
    key=None,
    payload=(_nested(1200, '"x\\"y"'), None),
    headers='{"deep": ' + _nested(1000, "1.0") + ', "n": ' + "7" * 5000 + "}",
    event_type=None,
    aggregate_type="order",
)
@given(
    key=keys,
    payload=payloads,
    headers=header_objects,
    event_type=st.one_of(st.none(), texts),
    aggregate_type=st.one_of(st.none(), texts),
)
def test_any_row_becomes_its_record_or_is_parked_and_the_cli_shows_it(  # noqa: PLR0917
    pair: RelayPair,
    key: str | None,
    payload: tuple[str | None, bytes | None],
    headers: str,
    event_type: str | None,
    aggregate_type: str | None,
) -> None:
    # A parked row holds its key: every example gets keys of its own.
    if key is not None:
        key = f"{next(_examples)}:{key}"
    json_payload, raw_payload = payload
    try:
        written = pair.write(
            "SELECT %s, %s, %s::jsonb, %s::bytea, %s::jsonb",
            key,
            json_payload,
            raw_payload,
            headers,
            event_type=event_type,
            aggregate_type=aggregate_type,
        )
    except psycopg.errors.CheckViolation as exc:
        # Over a documented limit (key, headers): refused by the service's own insert.
        refused = exc.diag.constraint_name
        hypothesis.event(f"refused at insert: {refused}")
        assert refused in {"outbox_key_size", "outbox_headers_size"}
        return
    with psycopg.connect(pair.database_url) as conn:
        [(jsonb_text,)] = conn.execute("SELECT %s::jsonb::text", (json_payload,)).fetchall()
    outcomes = []
    for row in written:
        outcome = pair.outcome(row, timeout_s=60)
        outcomes.append(type(outcome))
        if isinstance(outcome, str):
            hypothesis.event(f"parked: {outcome.split(':')[0]}")
        else:
            assert outcome.key == key
            if json_payload is not None:
                assert outcome.value == "".join(tokens(jsonb_text)).encode()
            else:
                assert outcome.value == raw_payload
            assert pair.headers(row) == expected_headers(pair.database_url, row)
        shown = cli(pair, row, "show", str(row.id))
        assert str(row.id) in shown
        assert json.loads(cli(pair, row, "show", str(row.id), "--json"))["id"] == row.id
        listed = cli(pair, row, "inspect", "--after-id", str(row.id - 1), "--limit", "1")
        assert str(row.id) in listed
        [inspected] = json.loads(
            cli(pair, row, "inspect", "--after-id", str(row.id - 1), "--limit", "1", "--json")
        )
        assert inspected["id"] == row.id
    # Both sources decide alike: a record in both, or parked in both.
    assert outcomes[0] is outcomes[1], outcomes
