"""Micro-benchmark: the pgoutput decoding WAL mode runs, on captured XLogData frames.

Measures what production runs: `relay.pgoutput.read_insert_columns` (the outbox insert's
columns) alone, and `relay.wal.StreamDecoder.feed` (Begin, Insert, Commit into events)
on a single-row transaction stream. A naive column reader that slices bytes and calls
``int.from_bytes`` per field runs on the same frames in the same run, so the ratio shows
what the struct/offset approach buys. Run from the repository root::

    PYTHONPATH=. python bench/pgoutput_decode.py [--frames 200000]
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from relay.pgoutput import XLOGDATA_HEADER_SIZE, read_insert_columns
from relay.wal import OUTBOX_COLUMNS, OutboxShape, StreamDecoder, WalTransaction
from tests.unit.pgoutput_fixtures import OUTBOX_BEGIN_FRAME as BEGIN_FRAME
from tests.unit.pgoutput_fixtures import OUTBOX_COMMIT_FRAME as COMMIT_FRAME
from tests.unit.pgoutput_fixtures import OUTBOX_INSERT_FRAME as INSERT_FRAME

if TYPE_CHECKING:
    from collections.abc import Callable

#: Where the outbox columns sit in `INSERT_FRAME`'s table (migrations/0001_outbox.sql):
#: the relay's columns in order, with ``sent_at`` (not read) between state and attempts.
SHAPE = OutboxShape(
    relation_id=int.from_bytes(INSERT_FRAME[XLOGDATA_HEADER_SIZE + 1 : XLOGDATA_HEADER_SIZE + 5]),
    positions=(*range(len(OUTBOX_COLUMNS) - 1), len(OUTBOX_COLUMNS)),
    width=len(OUTBOX_COLUMNS) + 1,
)


def naive_read_insert_columns(frame: bytes, count: int) -> list[bytes | None]:
    """The first `count` columns of an insert, the straightforward way: slice, repeat."""
    body = frame[XLOGDATA_HEADER_SIZE:]
    ncols = int.from_bytes(body[6:8], "big")
    rest = body[8:]
    values: list[bytes | None] = []
    for _ in range(min(count, ncols)):
        kind = rest[0:1]
        rest = rest[1:]
        if kind == b"n":
            values.append(None)
        else:
            length = int.from_bytes(rest[0:4], "big")
            values.append(rest[4 : 4 + length])
            rest = rest[4 + length :]
    return values


def best_of_three(run: Callable[[], object], count: int) -> float:
    """Frames per second of the best of three runs of `run` over `count` frames."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return count / best


def bench_inserts(count: int) -> None:
    """`read_insert_columns` against the naive reader, on `count` insert frames."""
    # bytes(memoryview), as psycopg's get_copy_data hands frames to the reader.
    frames = [bytes(memoryview(INSERT_FRAME)) for _ in range(count)]
    width = SHAPE.width
    assert read_insert_columns(frames[0], width) == naive_read_insert_columns(frames[0], width)  # noqa: S101

    def fast() -> None:
        for frame in frames:
            read_insert_columns(frame, width)

    def naive() -> None:
        for frame in frames:
            naive_read_insert_columns(frame, width)

    naive_rate, fast_rate = best_of_three(naive, count), best_of_three(fast, count)
    print(
        f"{'inserts':<22} {count:>8} frames   naive {naive_rate:>11,.0f} msg/s   "
        f"read_insert_columns {fast_rate:>11,.0f} msg/s   x{fast_rate / naive_rate:.2f}"
    )


def bench_stream(count: int) -> None:
    """`StreamDecoder.feed` on `count` frames of single-row transactions."""
    transaction = (BEGIN_FRAME, INSERT_FRAME, COMMIT_FRAME)
    frames = [transaction[i % 3] for i in range(count - count % 3)]

    def feed() -> None:
        decoder = StreamDecoder(schema="public", table="outbox", slot_name="bench")
        decoder.shape = SHAPE
        out: list[WalTransaction] = []
        decoder.feed(frames, out)
        assert len(out) == len(frames) // 3  # noqa: S101
        assert out[0].events[0].key == "order-4711"  # noqa: S101

    rate = best_of_three(feed, len(frames))
    print(
        f"{'begin/insert/commit':<22} {len(frames):>8} frames   "
        f"StreamDecoder.feed {rate:>11,.0f} frames/s   {rate / 3:>9,.0f} events/s"
    )


def main() -> None:
    """Benchmark an insert-only stream and a Begin/Insert/Commit stream."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--frames", type=int, default=200_000)
    count = parser.parse_args().frames
    bench_inserts(count)
    bench_stream(count)


if __name__ == "__main__":
    main()
