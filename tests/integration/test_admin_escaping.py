"""Rows are written by services, not trusted: `inspect` and `show` never put a control
character from a row (ESC sequences, C1 controls, bidi overrides) on the terminal."""

from __future__ import annotations

import json
import unicodedata

import psycopg
import pytest

from tests.support import run_cli

# Clear the screen, set the window title, a C1 CSI, a right-to-left override.
CLEAR = "\x1b[2J"
TITLE = "\x1b]0;pwned\x07"
CSI = "\x9b31m"
RLO = "\u202e"


def _raw_controls(text: str) -> list[str]:
    """Control characters in `text` besides the newlines and tabs of the layout."""
    return [
        c
        for c in text
        if c not in "\n\t" and (unicodedata.category(c) in {"Cc", "Zl", "Zp"} or c == RLO)
    ]


@pytest.fixture
def hostile(database_url: str, topic: str) -> list[str]:
    """Event ids of a parked JSON row and a skipped bytes row full of control sequences."""
    with psycopg.connect(database_url) as conn:
        json_row = conn.execute(
            "INSERT INTO outbox (topic, key, payload, headers, event_type, aggregate_type,"
            " state, attempts, last_error, parked_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, 'parked', 3, %s, now()) RETURNING event_id",
            (
                topic,
                f"k{CLEAR}",
                json.dumps({"note": f"{RLO}gnp.exe", "c1": CSI, "esc": CLEAR}),
                json.dumps({"title": TITLE, "c1": CSI}),
                f"Order{CLEAR}Placed",
                f"Order{CSI}",
                f"broker said {TITLE}\r\nfake line",
            ),
        ).fetchone()
        bytes_row = conn.execute(
            "INSERT INTO outbox (topic, key, payload_bytes, state, skip_reason)"
            " VALUES (%s, %s, %s, 'skipped', %s) RETURNING event_id",
            (topic, "k2", f"text{CLEAR}\r\nmore{CSI}".encode(), f"by ops{TITLE}"),
        ).fetchone()
        conn.commit()
    assert json_row is not None
    assert bytes_row is not None
    return [str(json_row[0]), str(bytes_row[0])]


def test_show_escapes_control_characters_of_every_field(
    database_url: str, hostile: list[str]
) -> None:
    for event_id in hostile:
        result = run_cli("show", "--database-url", database_url, event_id)
        assert result.returncode == 0, result.stderr
        assert _raw_controls(result.stdout) == [], result.stdout
        assert "\\x1b[2J" in result.stdout
    parked = run_cli("show", "--database-url", database_url, hostile[0]).stdout
    assert "event_type      Order\\x1b[2JPlaced" in parked
    assert "aggregate_type  Order\\x9b" in parked
    assert "last_error      broker said \\x1b]0;pwned\\x07\\x0d\\x0afake line" in parked
    assert "\\u202egnp.exe" in parked
    skipped = run_cli("show", "--database-url", database_url, hostile[1]).stdout
    assert "skip_reason     by ops\\x1b]0;pwned\\x07" in skipped
    assert "payload:\n  text\\x1b[2J\\x0d\n  more\\x9b31m" in skipped


@pytest.mark.usefixtures("hostile")
def test_inspect_escapes_control_characters(database_url: str, topic: str) -> None:
    result = run_cli("inspect", "--database-url", database_url, "--topic", topic)
    assert result.returncode == 0, result.stderr
    assert _raw_controls(result.stdout) == [], result.stdout
    assert "k\\x1b[2J" in result.stdout
    assert "by ops\\x1b]0;pwned\\x07" in result.stdout
    # --json and --jsonl output is JSON: every control character escaped by JSON itself.
    for flag in ("--json", "--jsonl"):
        data = run_cli("inspect", "--database-url", database_url, "--topic", topic, flag)
        assert data.returncode == 0, data.stderr
        assert _raw_controls(data.stdout) == []
