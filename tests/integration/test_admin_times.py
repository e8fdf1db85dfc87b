"""Times Python cannot hold (`infinity`, `-infinity`, year 10000 on; only the relay's role
or the owner can write them) never stop an operator command: `inspect`, `show` and
`status` print them as PostgreSQL's text."""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.support import run_cli

TIMES = ["infinity", "-infinity", "10000-01-01 00:00:00+00", "0044-03-15 12:00:00+00 BC"]


@pytest.fixture
def odd_rows(database_url: str, topic: str) -> list[str]:
    """Event ids of pending rows, one per odd `created_at`, and a parked one at infinity."""
    with psycopg.connect(database_url) as conn:
        ids = [
            str(
                conn.execute(
                    "INSERT INTO outbox (topic, key, payload, created_at)"
                    " VALUES (%s, %s, '{}', %s::timestamptz) RETURNING event_id",
                    (topic, f"k{n}", when),
                ).fetchone()[0]  # type: ignore[index]
            )
            for n, when in enumerate(TIMES)
        ]
        conn.execute(
            "INSERT INTO outbox (topic, key, payload, state, attempts, parked_at, created_at)"
            " VALUES (%s, 'kp', '{}', 'parked', 1, 'infinity', now())",
            (topic,),
        )
    return ids


def test_show_prints_a_time_python_cannot_hold_as_postgresql_does(
    database_url: str, odd_rows: list[str]
) -> None:
    with psycopg.connect(database_url) as conn:
        texts = [
            conn.execute(
                "SELECT created_at::text FROM outbox WHERE event_id = %s", (event_id,)
            ).fetchone()[0]  # type: ignore[index]
            for event_id in odd_rows
        ]
    for event_id, text in zip(odd_rows, texts, strict=True):
        result = run_cli("show", "--database-url", database_url, event_id)
        assert result.returncode == 0, result.stderr
        assert f"created_at      {text}\n" in result.stdout
        shown = run_cli("show", "--database-url", database_url, "--json", event_id)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["created_at"] == text


@pytest.mark.usefixtures("odd_rows")
def test_inspect_and_status_list_every_row_whatever_its_times(database_url: str) -> None:
    for state in ("pending", "parked"):
        listed = run_cli("inspect", "--database-url", database_url, "--state", state)
        assert listed.returncode == 0, listed.stderr
    pending = run_cli("inspect", "--database-url", database_url, "--state", "pending", "--json")
    assert pending.returncode == 0, pending.stderr
    assert sorted(row["key"] for row in json.loads(pending.stdout)) == ["k0", "k1", "k2", "k3"]
    status = run_cli("status", "--database-url", database_url, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["pending"] == len(TIMES)
