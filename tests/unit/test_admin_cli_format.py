from __future__ import annotations

from relay.admin_cli import format_age, printable, render_table, shorten


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


def test_printable_escapes_what_a_terminal_would_act_on() -> None:
    assert printable("a\x1b[2Jb\x07\x7f\x9b\u202e\u2028é😀") == (
        "a\\x1b[2Jb\\x07\\x7f\\x9b\\u202e\\u2028é😀"
    )
    assert printable("a\tb\nc", keep="\t") == "a\tb\\x0ac"


def test_shorten_escapes_after_flattening_whitespace() -> None:
    assert shorten("a\r\n\x1bb", 10) == "a \\x1bb"
