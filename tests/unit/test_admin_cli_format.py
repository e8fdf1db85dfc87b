from __future__ import annotations

import io

from relay.admin_cli import Progress, format_age, progress_line, render_table, shorten


def test_format_age() -> None:
    assert format_age(None) == "-"
    assert format_age(0.25) == "0.2s"
    assert format_age(42) == "42s"
    assert format_age(192) == "3m12s"
    assert format_age(2 * 3600 + 5 * 60) == "2h05m"
    assert format_age(3 * 86400 + 4 * 3600) == "3d04h"


def test_progress_line_shows_rate_and_eta() -> None:
    assert (
        progress_line(12_000, 50_000, 3.0) == "12,000/50,000 replayed   24%  4,000/s  ETA 0:00:10"
    )
    assert progress_line(0, 10, 0.0) == "0/10 replayed    0%  0/s  ETA ?"
    assert progress_line(10, 10, 2.0, "published").endswith("5/s  done")


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


def test_progress_off_a_terminal_prints_a_line_every_few_seconds_and_the_last() -> None:
    stream = io.StringIO()
    now = [0.0]
    progress = Progress(100, "replayed", stream=stream, clock=lambda: now[0])
    for done, at in [(10, 0.5), (20, 1.0), (50, 2.5), (60, 3.0)]:
        now[0] = at
        progress.update(done)
    now[0] = 4.0
    progress.update(100, final=True)
    lines = stream.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["10/100", "50/100", "100/100"]
    assert lines[-1].endswith("done")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_rewrites_one_line() -> None:
    stream = _Terminal()
    now = [0.0]
    progress = Progress(4, "published", stream=stream, clock=lambda: now[0])
    for done in range(1, 5):
        now[0] = done * 0.1
        progress.update(done, final=done == 4)
    output = stream.getvalue()
    assert output.count("\r\x1b[2K") == 4
    assert output.count("\n") == 1
    assert output.endswith("4/4 published  100%  10/s  done\n")
