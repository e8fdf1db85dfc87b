from __future__ import annotations

import io

from relay.progress import Progress, count_line


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_count_line_shows_rate_and_eta() -> None:
    assert count_line(12_000, 50_000, "replayed", 4000.0) == (
        "12,000/50,000 replayed   24%  4,000/s  ETA 0:00:10"
    )
    assert count_line(0, 10, "replayed", None) == "0/10 replayed    0%  ?/s  ETA ?"
    assert count_line(10, 10, "published", 5.0).endswith("5/s  done")


def test_off_a_terminal_a_line_every_few_seconds_and_the_last() -> None:
    stream = io.StringIO()
    now = [0.0]
    progress = Progress(stream, clock=lambda: now[0])
    for done, at in [(10, 0.5), (20, 1.0), (50, 2.5), (60, 3.0)]:
        now[0] = at
        progress.count(done, 100, "replayed")
    now[0] = 4.0
    progress.count(100, 100, "replayed", final=True)
    lines = stream.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["10/100", "50/100", "100/100"]
    assert lines[-1].endswith("done")


def test_the_rate_counts_from_the_first_count_shown_not_from_zero() -> None:
    # replay --wait starts when the relay already published most copies: 1,900 of 2,000
    # done 0.03 s in is not a rate of 62,667/s.
    stream = io.StringIO()
    now = [10.0]
    progress = Progress(stream, clock=lambda: now[0])
    now[0] = 10.03
    progress.count(1900, 2000, "published")
    now[0] = 12.03
    progress.count(1950, 2000, "published")
    first, second = stream.getvalue().splitlines()
    assert "?/s" in first
    assert "25/s" in second


def test_off_a_terminal_the_final_line_is_printed_once() -> None:
    stream = io.StringIO()
    now = [0.0]
    progress = Progress(stream, clock=lambda: now[0])
    progress.count(5, 5, "replayed")  # the last batch's callback
    progress.count(5, 5, "replayed", final=True)
    assert len(stream.getvalue().splitlines()) == 1


def test_on_a_terminal_one_line_is_rewritten_and_messages_start_their_own() -> None:
    stream = _Terminal()
    now = [0.0]
    progress = Progress(stream, clock=lambda: now[0])
    for done in range(1, 4):
        now[0] = done * 0.5
        progress.count(done, 4, "published")
    progress.say("broker slow")
    now[0] = 3.0
    progress.count(4, 4, "published", final=True)
    output = stream.getvalue()
    assert output.count("\r\x1b[2K") == 4
    before, after = output.split("broker slow\n")
    assert before.endswith("3/4 published   75%  2/s  ETA 0:00:00\n")  # line ended first
    assert after.startswith("\r\x1b[2K4/4")
    assert output.endswith("4/4 published  100%  1/s  done\n")
