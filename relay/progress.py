"""The one progress display of every long command (``replay``, ``purge``, ``demo``).

On a terminal, one line rewritten in place; elsewhere (a CI log, ``kubectl logs``) plain
lines, at most one every `LINE_INTERVAL_S` and never the same line twice, so a log shows
that a long run moves without drowning in it. Rates are measured from the first count
shown and only once a second has passed: a command that starts on work already half done
must not report a bogus burst.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable
from typing import IO, Final

#: Off a terminal, the shortest gap between two progress lines.
LINE_INTERVAL_S: Final = 2.0
#: A rate measured over less than this is noise; the line says ``?/s`` instead.
MIN_RATE_WINDOW_S: Final = 1.0


def count_line(done: int, total: int, verb: str, rate: float | None) -> str:
    """``12,000/50,000 replayed  24%  4,000/s  ETA 0:00:09`` (``?/s`` with no rate)."""
    percent = 100.0 * done / total if total else 100.0
    if done >= total:
        eta = "done"
    elif rate:
        eta = "ETA " + str(dt.timedelta(seconds=round((total - done) / rate)))
    else:
        eta = "ETA ?"
    speed = "?/s" if rate is None else f"{rate:,.0f}/s"
    return f"{done:,}/{total:,} {verb}  {percent:3.0f}%  {speed}  {eta}"


class Progress:
    """Progress lines and messages on one stream (stderr by default)."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        line_interval_s: float = LINE_INTERVAL_S,
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._clock = clock
        self._line_interval_s = line_interval_s
        self._last_line_at = float("-inf")
        self._last_text: str | None = None
        self._open_line = False
        self._first: tuple[float, int] | None = None

    def show(self, text: str, *, final: bool = False) -> None:
        """Show the latest progress; `final` ends it (always printed, once)."""
        now = self._clock()
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
            self._open_line = not final
        elif text != self._last_text and (
            final or now - self._last_line_at >= self._line_interval_s
        ):
            self.stream.write(text + "\n")
            self._last_line_at = now
            self._last_text = text
        self.stream.flush()

    def count(self, done: int, total: int, verb: str, *, final: bool = False) -> None:
        """Show ``done/total <verb>`` with the rate since the first count shown."""
        now = self._clock()
        if self._first is None:
            self._first = (now, done)
        since, start = self._first
        window = now - since
        rate = (done - start) / window if window >= MIN_RATE_WINDOW_S else None
        self.show(count_line(done, total, verb, rate), final=final)

    def say(self, text: str) -> None:
        """Print a message on its own line (ending an open progress line first)."""
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
        self.stream.write(text + "\n")
        self.stream.flush()
