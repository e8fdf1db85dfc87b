"""`skip --state pending`: an operator gives up on a pending poison row without SQL."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import psycopg.rows

from tests.support import run_cli

# A row Python's json cannot read (an integer beyond its 4300 digits, next to an escape).
POISON_HEADERS = '{"n": ' + "9" * 5000 + ', "q": "a\\"b"}'


def _insert(database_url: str, topic: str) -> list[dict[str, Any]]:
    """A pending poison row, a pending and a parked row after it, all of key k."""
    with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
        rows = [
            conn.execute(
                "INSERT INTO outbox (topic, key, payload, headers, state)"
                " VALUES (%s, 'k', '{}', %s, %s) RETURNING id, event_id::text",
                (topic, headers, state),
            ).fetchone()
            for headers, state in [
                (POISON_HEADERS, "pending"),
                ("{}", "pending"),
                ("{}", "parked"),
            ]
        ]
        conn.commit()
    return [row for row in rows if row is not None]


def _states(database_url: str, topic: str) -> list[tuple[str, str | None]]:
    with psycopg.connect(database_url) as conn:
        return [
            (str(state), reason)
            for state, reason in conn.execute(
                "SELECT state, skip_reason FROM outbox WHERE topic = %s ORDER BY id", (topic,)
            )
        ]


def test_skip_state_pending_skips_only_the_named_pending_row(database_url: str, topic: str) -> None:
    poison, later, _parked = _insert(database_url, topic)
    args = ("skip", "--database-url", database_url, "--state", "pending")

    dry = run_cli(*args, "--event-id", poison["event_id"], "--reason", "INC-9", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would skip 1 pending events" in dry.stdout
    assert _states(database_url, topic)[0] == ("pending", None)

    done = run_cli(*args, "--event-id", poison["event_id"], "--reason", "INC-9", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"skipped": 1, "reason": "INC-9"}
    assert _states(database_url, topic) == [
        ("skipped", "INC-9"),
        ("pending", None),
        ("parked", None),
    ]
    pending = run_cli("inspect", "--database-url", database_url, "--state", "pending", "--json")
    assert poison["event_id"] not in pending.stdout
    assert later["event_id"] in pending.stdout


def test_skip_state_pending_refuses_anything_but_event_ids(database_url: str, topic: str) -> None:
    _poison, _later, parked = _insert(database_url, topic)
    args = ("skip", "--database-url", database_url, "--state", "pending", "--reason", "r")
    for selection in (("--key", "k"), ("--topic", topic), ("--all",)):
        refused = run_cli(*args, *selection)
        assert refused.returncode == 2, refused.stdout
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert "--event-id" in refused.stderr
    # A parked row is not pending: nothing matches, nothing changes.
    missed = run_cli(*args, "--event-id", parked["event_id"])
    assert missed.returncode == 3, missed.stderr
    assert "no pending event matches" in missed.stderr
    assert [state for state, _ in _states(database_url, topic)] == ["pending", "pending", "parked"]
