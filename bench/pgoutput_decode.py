"""Micro-benchmark: pgoutput decoding of captured XLogData frames.

Compares ``relay.pgoutput.decode_xlogdata`` with a naive decoder that slices bytes and
calls ``int.from_bytes`` per field, measured in the same run on the same frames and
building the same message objects, so the ratio shows what the struct/offset approach
buys. Run from the repository root::

    PYTHONPATH=. python bench/pgoutput_decode.py [--frames 200000]
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from relay.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    BinaryValue,
    ColumnValue,
    Commit,
    Insert,
    PgOutputMessage,
    decode_xlogdata,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

# Frames captured from a PostgreSQL 15 walsender: one transaction inserting one event
# into a table shaped like migrations/0001_outbox.sql (17 columns, a 260-byte JSON
# payload), as psycopg's get_copy_data returns them.
BEGIN_FRAME = bytes.fromhex(
    "770000000002413de00000000002413de0000303e0d7a6720e420000000002414148000303e0d7a66ee300000339"
)
INSERT_FRAME = bytes.fromhex(
    "770000000002413de00000000002413de0000303e0d7a6731f"
    "49000040864e0010740000000131740000002437303338386363312d313663642d343038392d38356334"
    "2d656130663061376438376461740000000d6f72646572732e6576656e7473740000000a6f726465722d"
    "3437313174000000e97b226c696e6573223a205b7b22717479223a20322c2022736b75223a2022534b55"
    "2d31222c20227072696365223a202234392e3935227d2c207b22717479223a20312c2022736b75223a20"
    "22534b552d37222c20227072696365223a202235302e3030227d5d2c2022746f74616c223a2022313439"
    "2e3930222c202263757272656e6379223a2022455552222c20226f726465725f6964223a20226f726465"
    "722d34373131222c2022706c616365645f6174223a2022323032342d30332d30355431323a33343a3536"
    "2e3738395a222c2022637573746f6d65725f6964223a2022632d31303239227d6e740000004a7b227472"
    "616365706172656e74223a202230302d3462663932663335373762333464613661336365393239643065"
    "3065343733362d303066303637616130626139303262372d3031227d740000000b4f72646572506c6163"
    "656474000000056f72646572740000001d323032362d31312d32322031383a35393a31352e3639383135"
    "382b3030740000000770656e64696e676e7400000001306e6e6e"
)
COMMIT_FRAME = bytes.fromhex(
    "7700000000024141780000000002414178000303e0d7a67356"
    "430000000000024141480000000002414178000303e0d7a66ee3"
)


def naive_decode_xlogdata(frame: memoryview) -> tuple[int, int, PgOutputMessage]:
    """Decode Begin, Insert and Commit the straightforward way: slice, from_bytes, repeat."""
    data = bytes(frame)
    data_start = int.from_bytes(data[1:9], "big")
    wal_end = int.from_bytes(data[9:17], "big")
    body = data[25:]
    tag = body[0:1]
    if tag == b"B":
        return (
            data_start,
            wal_end,
            Begin(
                int.from_bytes(body[1:9], "big"),
                int.from_bytes(body[9:17], "big", signed=True),
                int.from_bytes(body[17:21], "big"),
            ),
        )
    if tag == b"C":
        return (
            data_start,
            wal_end,
            Commit(
                body[1],
                int.from_bytes(body[2:10], "big"),
                int.from_bytes(body[10:18], "big"),
                int.from_bytes(body[18:26], "big", signed=True),
            ),
        )
    if tag == b"I":
        relation_id = int.from_bytes(body[1:5], "big")
        ncols = int.from_bytes(body[6:8], "big")
        rest = body[8:]
        values: list[ColumnValue] = []
        for _ in range(ncols):
            kind = rest[0:1]
            rest = rest[1:]
            if kind == b"n":
                values.append(None)
            elif kind == b"u":
                values.append(UNCHANGED_TOAST)
            else:
                length = int.from_bytes(rest[0:4], "big")
                value = rest[4 : 4 + length]
                rest = rest[4 + length :]
                values.append(value if kind == b"t" else BinaryValue(value))
        return data_start, wal_end, Insert(None, relation_id, tuple(values))
    raise ValueError(tag)


def fast_decode_xlogdata(frame: memoryview) -> tuple[int, int, PgOutputMessage]:
    """The decoder under test, with the keyword-only default spelled out."""
    return decode_xlogdata(frame)


def measure(decoder: Callable[[memoryview], object], frames: Sequence[memoryview]) -> float:
    """Messages per second of the best of three passes over ``frames``."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for frame in frames:
            decoder(frame)
        best = min(best, time.perf_counter() - started)
    return len(frames) / best


def run(name: str, frames: Sequence[memoryview]) -> None:
    """Check both decoders agree on ``frames``, then time them and print the ratio."""
    for frame in frames[:3]:
        assert naive_decode_xlogdata(frame) == fast_decode_xlogdata(frame), frame  # noqa: S101
    naive = measure(naive_decode_xlogdata, frames)
    fast = measure(fast_decode_xlogdata, frames)
    print(
        f"{name:<22} {len(frames):>8} frames   "
        f"naive {naive:>11,.0f} msg/s   decode_xlogdata {fast:>11,.0f} msg/s   "
        f"x{fast / naive:.2f}"
    )


def main() -> None:
    """Benchmark an insert-only stream and a Begin/Insert/Commit stream."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--frames", type=int, default=200_000)
    count = parser.parse_args().frames
    # memoryviews, like psycopg's get_copy_data: the copy to bytes is part of the cost.
    inserts = [memoryview(INSERT_FRAME) for _ in range(count)]
    transaction = (BEGIN_FRAME, INSERT_FRAME, COMMIT_FRAME)
    transactions = [memoryview(transaction[i % 3]) for i in range(count)]
    run("inserts", inserts)
    run("begin/insert/commit", transactions)


if __name__ == "__main__":
    main()
