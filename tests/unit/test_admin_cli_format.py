from __future__ import annotations

from relay.admin_cli import format_age, render_table, shorten


def test_format_age() -> None:
    assert format_age(None) == "-"
    assert format_age(0.25) == "0.2s"
    assert format_age(42) == "42s"
    assert format_age(192) == "3m12s"
    assert format_age(2 * 3600 + 5 * 60) == "2h05m"
    assert format_age(3 * 86400 + 4 * 3600) == "3d04h"


def test_render_table_aligns_numbers_right() -> None:
    table = render_table(["topic", "events"], [["orders", "1,200"], ["payments.eu", "7"]])
    assert table.splitlines() == [
        "topic        events",
        "orders        1,200",
        "payments.eu       7",
    ]


def test_shorten_flattens_and_cuts() -> None:
    assert shorten("a\n  b", 10) == "a b"
    assert shorten("abcdefghij", 5) == "abcd…"
