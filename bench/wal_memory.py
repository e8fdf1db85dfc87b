"""Memory of WAL mode's start-up hand-over: peak RSS while draining a pending backlog.

One command starts its own PostgreSQL; Kafka is replaced by a publisher that
acknowledges at once, so only the relay's own memory is measured::

    PYTHONPATH=. python bench/wal_memory.py [--events 1000000]
    PYTHONPATH=. python bench/wal_memory.py --outage-seconds 600 [--events-per-s 50] \
        [--other-tps 500] [--payload-bytes 0]

The backlog is written before the relay starts (so it creates the slot and sweeps the
table in the slot's snapshot, then streams); the relay drains it with ``--on-sent
mark``. Printed: events, seconds, events/s, and the relay process's peak RSS (the goal
of issue 9: at most 150 MB at 10M rows, independent of the backlog's size).

With ``--outage-seconds N`` it measures a broker outage instead: the relay streams
with an empty backlog while the publisher answers every batch with a retriable
failure for N seconds; meanwhile a writer process commits a modest rate of outbox
events and many small transactions to another table of the same database (zero-event
transactions for the slot). Then the outage ends and the relay drains. Printed: RSS
every 10 s, the peak, events written and delivered, and the verdict against 150 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import time
from collections.abc import Sequence
from pathlib import Path

import psycopg

from relay import logs, migrate
from relay._embedded import EmbeddedPostgres
from relay.config import Mode, Settings
from relay.events import OutboxEvent, PublishFailure, PublishResult
from relay.loop import LoopConfig, RelayLoop
from relay.wal import WalSource

FILL_CHUNK = 1_000_000
LIMIT_MB = 150
SAMPLE_S = 10.0
WRITER_TICK_S = 0.1


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


class OutagePublisher:
    """Fails every batch retriably until the outage ends, then acknowledges at once."""

    def __init__(self, outage_until: float) -> None:
        self.outage_until = outage_until
        self.refused = 0
        self.delivered: set[str] = set()

    async def start(self) -> None:
        """Nothing to connect."""

    async def stop(self) -> None:
        """Nothing to flush."""

    async def publish(self, events: Sequence[OutboxEvent]) -> PublishResult:
        """All failed retriably during the outage (as a down broker), else acknowledged."""
        if time.monotonic() < self.outage_until:
            self.refused += len(events)
            failure = PublishFailure("KafkaUnavailable: bench outage", retriable=True)
            return PublishResult(tuple(events), (failure,) * len(events))
        self.delivered.update(event.event_id for event in events)
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


def write_busy(
    url: str,
    seconds: float,
    *,
    events_per_s: int,
    other_tps: int,
    payload_bytes: int,
    written: multiprocessing.sharedctypes.Synchronized[int],
    other: multiprocessing.sharedctypes.Synchronized[int],
) -> None:
    """Commits one-event outbox transactions and one-row `busy` transactions for `seconds`."""
    per_tick_events = max(1, round(events_per_s * WRITER_TICK_S))
    per_tick_other = round(other_tps * WRITER_TICK_S)
    payload = json.dumps({"sku": "SKU-1", "total": "149.90", "pad": "x" * payload_bytes})
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.monotonic()
        tick = 0
        while time.monotonic() - started < seconds:
            for _ in range(per_tick_events):
                conn.execute(
                    "INSERT INTO outbox (topic, key, payload) VALUES ('bench', %s, %s)",
                    (f"order-{written.value % 1000}", payload),
                )
                written.value += 1
            for _ in range(per_tick_other):
                conn.execute("INSERT INTO busy (n) VALUES (%s)", (tick,))
                other.value += 1
            tick += 1
            time.sleep(max(0.0, started + tick * WRITER_TICK_S - time.monotonic()))


def held(source: WalSource) -> str:
    """What the WAL source holds: tracker entries, queued and in-flight events."""
    tracker = source._tracker  # noqa: SLF001
    queued = len(source._queue)  # noqa: SLF001
    held_mb = source._held_bytes / 2**20  # noqa: SLF001
    fetched = len(source._fetched.events)  # noqa: SLF001
    return (
        f"tracker {tracker.open_transactions} txs/{tracker.pending_events} events, "
        f"queued {queued}, in flight {fetched} ({held_mb:.1f} MiB together)"
    )


async def outage(settings: Settings, args: argparse.Namespace) -> float:
    context = multiprocessing.get_context("spawn")
    written = context.Value("q", 0)
    other = context.Value("q", 0)
    publisher = OutagePublisher(time.monotonic() + args.outage_seconds)
    source = WalSource(settings)
    await source.start()
    loop = RelayLoop(source, publisher, LoopConfig(batch_size=2000, poll_interval_s=0.2))
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop), name="relay")
    writer = context.Process(
        target=write_busy,
        args=(settings.database_url, args.outage_seconds),
        kwargs={
            "events_per_s": args.events_per_s,
            "other_tps": args.other_tps,
            "payload_bytes": args.payload_bytes,
            "written": written,
            "other": other,
        },
        name="writer",
    )
    writer.start()
    started = time.monotonic()
    peak = rss_mb()
    next_sample = started
    while writer.is_alive() or len(publisher.delivered) < written.value:
        now = time.monotonic()
        rss = rss_mb()
        peak = max(peak, rss)
        if now >= next_sample:
            phase = "outage" if now < publisher.outage_until else "drain"
            print(
                f"t={now - started:5.0f} s {phase:6} RSS {rss:6.1f} MB; written "
                f"{written.value:,} events + {other.value:,} busy txs; refused "
                f"{publisher.refused:,}, delivered {len(publisher.delivered):,}; "
                f"{held(source)}",
                flush=True,
            )
            next_sample += SAMPLE_S
        if task.done():
            task.result()
        await asyncio.sleep(0.25)
    seconds = time.monotonic() - started
    writer.join()
    stop.set()
    await asyncio.wait_for(task, 30)
    await source.stop()
    peak = max(peak, rss_mb())
    verdict = "PASS" if peak <= LIMIT_MB else "FAIL"
    print(
        f"outage of {args.outage_seconds:.0f} s: written {written.value:,} events + "
        f"{other.value:,} busy txs ({other.value / args.outage_seconds:,.0f}/s), delivered "
        f"{len(publisher.delivered):,} after {seconds:.0f} s; peak RSS {peak:.1f} MB: "
        f"{verdict} (limit {LIMIT_MB} MB)"
    )
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="backlog size")
    parser.add_argument(
        "--outage-seconds", type=float, default=0, help="measure a broker outage instead"
    )
    parser.add_argument("--events-per-s", type=int, default=50, help="outbox rate (outage)")
    parser.add_argument(
        "--other-tps", type=int, default=500, help="transactions/s to another table (outage)"
    )
    parser.add_argument(
        "--payload-bytes", type=int, default=0, help="padding per outbox payload (outage)"
    )
    args = parser.parse_args()
    logs.configure("warning", "console")
    with EmbeddedPostgres() as cluster:
        settings = Settings(database_url=cluster.url, mode=Mode.WAL)
        migrate.apply(settings)
        if args.outage_seconds:
            with psycopg.connect(cluster.url, autocommit=True) as conn:
                conn.execute("CREATE TABLE busy (id bigserial PRIMARY KEY, n int NOT NULL)")
            asyncio.run(outage(settings, args))
            return
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
