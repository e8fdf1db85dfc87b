"""Benchmark of WAL mode, end to end: PostgreSQL slot -> relay -> Kafka acknowledgement.

One command starts its own PostgreSQL (wal_level=logical) and broker::

    PYTHONPATH=. python bench/wal.py [--quick]

It measures, in the same run:

* drain rate of a backlog written while the relay was stopped, as single-row
  transactions and as 100-row transactions: events/s from relay start until Kafka
  acknowledged and the table marked the last event;
* what the server alone decodes: ``pg_logical_slot_peek_binary_changes`` over the same
  backlog, on a second slot created at the same point, and the ratio relay/server;
* commit-to-ack latency (p50, p99) at a steady 1k and 5k events/s written by another
  process, measured from each row's ``created_at`` to the broker's acknowledgement.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time
from collections.abc import Sequence

import psycopg

from relay import logs, migrate
from relay._embedded import EmbeddedBroker, EmbeddedPostgres
from relay.config import Mode, OnSent, Settings
from relay.events import OutboxEvent, PublishResult
from relay.kafka import KafkaPublisher
from relay.loop import LoopConfig, RelayLoop
from relay.wal import WalSource

PAYLOAD = (
    '{"order_id": "order-4711", "customer_id": "c-1029", "total": "149.90", '
    '"currency": "EUR", "lines": [{"sku": "SKU-1", "qty": 2, "price": "49.95"}]}'
)
FILL = """
CREATE OR REPLACE PROCEDURE bench_fill(n int, per_tx int, topic text) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..n LOOP
        INSERT INTO outbox (topic, key, payload, headers, event_type)
        VALUES (topic, 'order-' || mod(i, 1000), {payload}::jsonb,
                '{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}',
                'OrderPlaced');
        IF mod(i, per_tx) = 0 THEN COMMIT; END IF;
    END LOOP;
END $$;
"""


class TimingPublisher(KafkaPublisher):
    """Records, per acknowledged event, the seconds from its creation to the ack."""

    def __init__(self, settings: Settings, *, latencies: bool = False) -> None:
        super().__init__(settings)
        #: Collected only when asked (the latency runs): a drain counts acknowledgements.
        self.track_latencies = latencies
        self.latencies: list[float] = []
        self.acknowledged = 0
        #: When the relay loop started (connections made, slot checked).
        self.started = 0.0
        self.finished = 0.0

    async def publish(self, events: Sequence[OutboxEvent]) -> PublishResult:
        result = await super().publish(events)
        self.acknowledged += result.failures.count(None)
        if self.track_latencies:
            now = time.time()
            for event, failure in zip(result.events, result.failures, strict=True):
                if failure is None and event.created_at is not None:
                    self.latencies.append(now - event.created_at.timestamp())
        return result


class StreamOnlySource(WalSource):
    """WalSource without the start-up sweep of pending rows.

    A relay that starts with a backlog publishes the pending rows it finds in the table
    first (and the stream skips them); this variant makes the stream carry the backlog,
    to measure the streaming path itself.
    """

    async def _sweep(self, snapshot_name: str | None, **_options: object) -> None:  # noqa: ARG002
        return


def new_database(cluster: EmbeddedPostgres, name: str) -> str:
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = cluster.url_for(name)
    migrate.apply(Settings(database_url=url))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(FILL.replace("{payload}", "'" + PAYLOAD + "'"))  # type: ignore[arg-type]
    return url


def sent_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM outbox WHERE state = 'sent'").fetchone()
    return int(row[0]) if row else 0


async def relay_until(
    settings: Settings,
    done: object,
    timeout_s: float,
    *,
    stream_only: bool = False,
    latencies: bool = False,
) -> TimingPublisher:
    """Run the relay until `done(publisher)` is true; return the publisher."""
    if not callable(done):
        raise TypeError(done)
    publisher = TimingPublisher(settings, latencies=latencies)
    await publisher.start()
    source = (StreamOnlySource if stream_only else WalSource)(settings)
    await source.start()
    loop = RelayLoop(source, publisher, LoopConfig(batch_size=settings.batch_size))
    publisher.started = time.perf_counter()
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    deadline = time.monotonic() + timeout_s
    try:
        while not done(publisher) and time.monotonic() < deadline:  # noqa: ASYNC110 - a probe
            await asyncio.sleep(0.005)
        publisher.finished = time.perf_counter()
    finally:
        stop.set()
        await task
        await source.stop()
        await publisher.stop()
    return publisher


def drain(
    cluster: EmbeddedPostgres,
    broker: EmbeddedBroker,
    events: int,
    per_tx: int,
    *,
    stream_only: bool,
    on_sent: OnSent = OnSent.MARK,
) -> None:
    name = f"drain_{per_tx}_{'stream' if stream_only else 'restart'}_{on_sent.value}"
    url = new_database(cluster, name)
    settings = Settings(
        database_url=url,
        bootstrap_servers=broker.bootstrap_servers,
        mode=Mode.WAL,
        slot_name=name,
        kafka_enable_idempotence=False,
        on_sent=on_sent,
        batch_size=5000,
        log_level="warning",
    )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (settings.slot_name,)
        )
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name + "_peek",))
        started = time.perf_counter()
        conn.execute("CALL bench_fill(%s, %s, 'bench')", (events, per_tx))
        write_s = time.perf_counter() - started
        started = time.perf_counter()
        conn.execute(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, "
            "'proto_version', '1', 'publication_names', 'outbox_pub')",
            (name + "_peek",),
        )
        server_s = time.perf_counter() - started
        conn.execute("SELECT pg_drop_replication_slot(%s)", (name + "_peek",))

    publisher = asyncio.run(
        relay_until(
            settings, lambda p: p.acknowledged >= events, timeout_s=600, stream_only=stream_only
        )
    )
    relay_s = publisher.finished - publisher.started
    marked = sent_count(url) if on_sent is OnSent.MARK else events
    label = "single-row tx" if per_tx == 1 else f"{per_tx}-row tx"
    how = ("stream " if stream_only else "restart") + f", on-sent {on_sent.value:<4}"
    print(
        f"drain {events} events, {label:>13}, {how}: relay {events / relay_s:9,.0f} ev/s "
        f"({relay_s:.2f} s), server decode alone {events / server_s:9,.0f} ev/s "
        f"({server_s:.2f} s), relay/server {server_s / relay_s:.2f}; "
        f"written in {write_s:.1f} s; acked {publisher.acknowledged}, marked sent {marked}"
    )


def _writer(url: str, rate: int, seconds: float) -> None:
    ticks_per_s = 100
    per_tick = max(1, rate // ticks_per_s)
    with psycopg.connect(url, autocommit=True) as conn:
        # The embedded cluster commits asynchronously (its WAL reaches the walsender
        # only at the WAL writer's next round, up to 200 ms): services commit durably.
        conn.execute("SET synchronous_commit = on")
        start = time.monotonic()
        tick = 0
        while time.monotonic() - start < seconds:
            conn.execute("CALL bench_fill(%s, %s, 'latency')", (per_tick, per_tick))
            tick += 1
            sleep = start + tick / ticks_per_s - time.monotonic()
            if sleep > 0:
                time.sleep(sleep)


def latency(cluster: EmbeddedPostgres, broker: EmbeddedBroker, rate: int, seconds: float) -> None:
    url = new_database(cluster, f"latency_{rate}")
    settings = Settings(
        database_url=url,
        bootstrap_servers=broker.bootstrap_servers,
        mode=Mode.WAL,
        slot_name=f"latency_{rate}",
        kafka_enable_idempotence=False,
        log_level="warning",
    )
    expected = int(rate * seconds) // max(1, rate // 100) * max(1, rate // 100)
    writer = multiprocessing.get_context("spawn").Process(target=_writer, args=(url, rate, seconds))

    async def run() -> TimingPublisher:
        async def start_writer_when_streaming() -> None:
            await asyncio.sleep(2.0)  # the relay creates its slot first
            writer.start()

        starter = asyncio.create_task(start_writer_when_streaming())
        publisher = await relay_until(
            settings,
            lambda p: (
                p.acknowledged >= expected * 0.999 and not writer.is_alive()
                if writer.pid
                else False
            ),
            timeout_s=seconds + 60,
            latencies=True,
        )
        await starter
        return publisher

    publisher = asyncio.run(run())
    writer.join()
    values = sorted(publisher.latencies)
    if not values:
        print(f"latency at {rate} ev/s: no events")
        return
    p50 = statistics.quantiles(values, n=100)[49] * 1000
    p99 = statistics.quantiles(values, n=100)[98] * 1000
    print(
        f"commit-to-ack at {rate:>5} ev/s for {seconds:.0f} s: p50 {p50:6.1f} ms, "
        f"p99 {p99:6.1f} ms, max {values[-1] * 1000:6.1f} ms ({len(values)} events)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k events, 3 s per rate")
    parser.add_argument("--events", type=int, default=0, help="backlog size (default 100k)")
    args = parser.parse_args()
    events = args.events or (20_000 if args.quick else 100_000)
    seconds = 3.0 if args.quick else 10.0
    logs.configure(os.environ.get("BENCH_LOG", "warning"), "console")
    with EmbeddedPostgres() as cluster, EmbeddedBroker() as broker:
        for per_tx in (1, 100):
            drain(cluster, broker, events, per_tx, stream_only=True)
            drain(cluster, broker, events, per_tx, stream_only=False)
            # The ceiling without PostgreSQL's UPDATE of every sent row.
            drain(cluster, broker, events, per_tx, stream_only=True, on_sent=OnSent.NONE)
        latency(cluster, broker, 1000, seconds)
        latency(cluster, broker, 5000, seconds)


if __name__ == "__main__":
    main()
