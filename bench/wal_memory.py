"""Memory of WAL mode's start-up hand-over: peak RSS while draining a pending backlog.

One command starts its own PostgreSQL; Kafka is replaced by a publisher that
acknowledges at once, so only the relay's own memory is measured::

    PYTHONPATH=. python bench/wal_memory.py [--events 1000000]

The backlog is written before the relay starts (so it creates the slot and sweeps the
table in the slot's snapshot, then streams); the relay drains it with ``--on-sent
mark``. Printed: events, seconds, events/s, and the relay process's peak RSS (the goal
of issue 9: at most 150 MB at 10M rows, independent of the backlog's size).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
from collections.abc import Sequence
from pathlib import Path

import psycopg

from relay import logs, migrate
from relay._embedded import EmbeddedPostgres
from relay.config import Mode, Settings
from relay.events import OutboxEvent, PublishResult
from relay.loop import LoopConfig, RelayLoop
from relay.wal import WalSource

FILL_CHUNK = 1_000_000


class InstantPublisher:
    """Acknowledges every event at once; counts them."""

    def __init__(self) -> None:
        self.acknowledged = 0

    async def start(self) -> None:
        """Nothing to connect."""

    async def stop(self) -> None:
        """Nothing to flush."""

    async def publish(self, events: Sequence[OutboxEvent]) -> PublishResult:
        """Every event acknowledged."""
        self.acknowledged += len(events)
        return PublishResult(tuple(events), (None,) * len(events))


def rss_mb() -> float:
    """Current resident set size of this process, in MB."""
    with Path("/proc/self/status").open(encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fill(url: str, events: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for start in range(0, events, FILL_CHUNK):
            count = min(FILL_CHUNK, events - start)
            conn.execute(
                "INSERT INTO outbox (topic, key, payload) "
                "SELECT 'bench', 'order-' || (i %% 1000), "
                "jsonb_build_object('n', i, 'sku', 'SKU-1', 'total', '149.90') "
                "FROM generate_series(%s::int, %s::int) i",
                (start + 1, start + count),
            )


async def drain(settings: Settings, events: int) -> tuple[float, float]:
    publisher = InstantPublisher()
    source = WalSource(settings)
    peak = rss_mb()
    started = time.monotonic()
    await source.start()
    loop = RelayLoop(source, publisher, LoopConfig(batch_size=2000, poll_interval_s=0.2))
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop), name="relay")
    while publisher.acknowledged < events:
        await asyncio.sleep(0.25)
        peak = max(peak, rss_mb())
        if task.done():
            task.result()
    seconds = time.monotonic() - started
    stop.set()
    await asyncio.wait_for(task, 30)
    await source.stop()
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="backlog size")
    args = parser.parse_args()
    logs.configure("warning", "console")
    with EmbeddedPostgres() as cluster:
        settings = Settings(database_url=cluster.url, mode=Mode.WAL)
        migrate.apply(settings)
        fill(cluster.url, args.events)
        baseline = rss_mb()
        seconds, peak = asyncio.run(drain(settings, args.events))
    max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"hand-over of {args.events:,} pending rows: {seconds:.1f} s "
        f"({args.events / seconds:,.0f} ev/s); relay RSS before {baseline:.0f} MB, "
        f"peak {peak:.0f} MB; ru_maxrss {max_rss_mb:.0f} MB"
    )


if __name__ == "__main__":
    main()
