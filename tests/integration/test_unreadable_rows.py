"""Rows the relay cannot turn into a record are parked with a reason, never fatal; rows
Python's JSON decoder could not read (deep, huge integers) are relayed byte for byte."""

from __future__ import annotations

import json

import psycopg

from relay.config import Settings
from tests.integration.poll_stack import async_wait_until, relay_in_process, states
from tests.support import Consumed, consume, run_cli

DEPTH = 1500
#: More digits than Python's ``int`` converts from text by default (4300).
HUGE_INT = "9" * 5000
DEEP_HEADERS = '{"h": ' * DEPTH + "1" + "}" * DEPTH
HUGE_HEADERS = '{"n": ' + HUGE_INT + ', "q": "a\\"b"}'
DEEP_PAYLOAD = "[" * DEPTH + '"x\\"y"' + "]" * DEPTH
HUGE_PAYLOAD = '{"note": "a\\"b", "n": ' + HUGE_INT + "}"


def write_rows(url: str, topic: str, *, unreadable: bool = False) -> dict[str, int]:
    """Hostile rows by plain SQL, each followed by a later event of its key, among others.

    With `unreadable`, also a row (key ``bad-t``) whose creation time Python has no
    datetime for, which only the relay's role or the owner can write.
    """
    rows = [
        ("ok-0", '{"n": 0}', "{}"),
        ("deep-h", '{"n": 1}', DEEP_HEADERS),
        ("ok-1", '{"n": 2}', "{}"),
        ("huge-h", '{"n": 3}', HUGE_HEADERS),
        ("deep-p", DEEP_PAYLOAD, "{}"),
        ("huge-p", HUGE_PAYLOAD, "{}"),
        ("deep-h", '{"n": 4}', "{}"),
        ("huge-h", '{"n": 5}', "{}"),
        ("ok-0", '{"n": 6}', "{}"),
        ("ok-1", '{"n": 7}', "{}"),
    ]
    if unreadable:
        rows[6:6] = [("bad-t", '{"n": 8}', "{}")]
        rows.append(("bad-t", '{"n": 9}', "{}"))
    ids: dict[str, int] = {}
    with psycopg.connect(url) as conn:
        for n, (key, payload, headers) in enumerate(rows):
            row = conn.execute(
                "INSERT INTO outbox (topic, key, payload, headers, created_at) "
                "VALUES (%s, %s, %s::jsonb, %s::jsonb, "
                "CASE WHEN %s THEN 'infinity' ELSE now() END) RETURNING id",
                (topic, key, payload, headers, key == "bad-t" and n == 6),
            ).fetchone()
            assert row is not None
            ids[f"{key}#{n}"] = row[0]
    return ids


def state_of(url: str, id_: int) -> tuple[str, str | None]:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT state, last_error FROM outbox WHERE id = %s", (id_,)).fetchone()
    assert row is not None
    return row[0], row[1]


def jsonb_compact(url: str, text: str) -> bytes:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT %s::jsonb::text", (text,)).fetchone()
    assert row is not None
    printed: str = row[0]
    return printed.replace(", ", ",").replace(": ", ":").encode()


async def test_unreadable_rows_are_parked_hold_their_key_and_others_flow(
    settings: Settings, topic: str
) -> None:
    url = settings.database_url
    ids = write_rows(url, topic, unreadable=True)
    async with relay_in_process(settings):
        await async_wait_until("the rest sent", lambda: states(url).get("sent", 0) == 10, 30)
        await async_wait_until("one parked", lambda: states(url).get("parked", 0) == 1, 30)
    state, error = state_of(url, ids["bad-t#6"])
    assert state == "parked"
    assert error is not None
    assert error.startswith("Unreadable: cannot build a record")
    # The later event of its key waits behind it.
    assert state_of(url, ids["bad-t#11"])[0] == "pending"

    records = await consume(settings.bootstrap_servers, [topic], expected=10)
    by_key: dict[str | None, list[Consumed]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_key.setdefault(record.key, []).append(record)
    assert [r.value for r in by_key["ok-0"]] == [b'{"n":0}', b'{"n":6}']
    assert [r.value for r in by_key["ok-1"]] == [b'{"n":2}', b'{"n":7}']
    # Payloads deep or holding a huge integer are relayed byte for byte (no parse).
    assert [r.value for r in by_key["deep-p"]] == [jsonb_compact(url, DEEP_PAYLOAD)]
    assert [r.value for r in by_key["huge-p"]] == [jsonb_compact(url, HUGE_PAYLOAD)]
    # So are such headers: each value is its jsonb text without whitespace.
    deep_h = by_key["deep-h"][0].headers["h"]
    assert deep_h == jsonb_compact(url, DEEP_HEADERS)[len(b'{"h":') : -1]
    assert by_key["huge-h"][0].headers["n"] == HUGE_INT.encode()
    assert by_key["huge-h"][0].headers["q"] == b'a"b'


def test_inspect_and_show_display_rows_python_cannot_decode(database_url: str, topic: str) -> None:
    ids = write_rows(database_url, topic)
    pending = run_cli("inspect", "--database-url", database_url, "--state", "pending")
    assert pending.returncode == 0, pending.stderr
    for id_ in ids.values():
        assert str(id_) in pending.stdout
    as_json = run_cli("inspect", "--database-url", database_url, "--state", "pending", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert len(json.loads(as_json.stdout)) == len(ids)
    with psycopg.connect(database_url) as conn:
        texts: dict[int, str] = dict(
            conn.execute("SELECT id, headers::text || payload::text FROM outbox")
        )
    for name in ("deep-h#1", "huge-h#3", "deep-p#4", "huge-p#5"):
        id_ = ids[name]
        shown = run_cli("show", "--database-url", database_url, str(id_))
        assert shown.returncode == 0, shown.stderr
        printed = [line.strip() for line in shown.stdout.splitlines()]
        headers_at = printed.index("headers:")
        assert "".join(printed[headers_at + 1 :]).replace(" ", "").replace("payload:", "") == (
            texts[id_].replace(" ", "")
        )
        shown_json = run_cli("show", "--database-url", database_url, str(id_), "--json")
        assert shown_json.returncode == 0, shown_json.stderr
        assert json.loads(shown_json.stdout)["id"] == id_
