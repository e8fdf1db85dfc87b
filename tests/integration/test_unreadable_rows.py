"""Rows the relay cannot turn into a record are parked with a reason, never fatal."""

from __future__ import annotations

import json

import psycopg

from relay.config import Settings
from tests.integration.poll_stack import async_wait_until, relay_in_process, states
from tests.support import consume, run_cli

DEPTH = 1500
#: More digits than Python's ``int`` converts from text by default (4300).
HUGE_INT = "9" * 5000
DEEP_HEADERS = '{"h": ' * DEPTH + "1" + "}" * DEPTH
HUGE_HEADERS = '{"n": ' + HUGE_INT + ', "q": "a\\"b"}'
DEEP_PAYLOAD = "[" * DEPTH + '"x\\"y"' + "]" * DEPTH
HUGE_PAYLOAD = '{"note": "a\\"b", "n": ' + HUGE_INT + "}"


def write_rows(url: str, topic: str) -> dict[str, int]:
    """Hostile rows by plain SQL, each followed by a later event of its key, among others."""
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
    ids: dict[str, int] = {}
    with psycopg.connect(url) as conn:
        for n, (key, payload, headers) in enumerate(rows):
            row = conn.execute(
                "INSERT INTO outbox (topic, key, payload, headers) "
                "VALUES (%s, %s, %s::jsonb, %s::jsonb) RETURNING id",
                (topic, key, payload, headers),
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
    ids = write_rows(url, topic)
    async with relay_in_process(settings):
        await async_wait_until("the rest sent", lambda: states(url).get("sent", 0) == 6, 30)
        await async_wait_until("both parked", lambda: states(url).get("parked", 0) == 2, 30)
    for name in ("deep-h#1", "huge-h#3"):
        state, error = state_of(url, ids[name])
        assert state == "parked"
        assert error is not None
        assert error.startswith("Unreadable: cannot build a record")
    # The later events of their keys wait behind them.
    assert state_of(url, ids["deep-h#6"])[0] == "pending"
    assert state_of(url, ids["huge-h#7"])[0] == "pending"

    records = await consume(settings.bootstrap_servers, [topic], expected=6)
    by_key: dict[str | None, list[bytes | None]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_key.setdefault(record.key, []).append(record.value)
    assert by_key["ok-0"] == [b'{"n":0}', b'{"n":6}']
    assert by_key["ok-1"] == [b'{"n":2}', b'{"n":7}']
    # Payloads deep or holding a huge integer are relayed byte for byte (no parse).
    assert by_key["deep-p"] == [jsonb_compact(url, DEEP_PAYLOAD)]
    assert by_key["huge-p"] == [jsonb_compact(url, HUGE_PAYLOAD)]


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
