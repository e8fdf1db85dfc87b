"""Poll-mode benchmark: our relay against a naive relay, in the same run, on one machine.

    .venv/bin/python bench/poll.py            # 100k backlog, 10 s at 1k/s and at 5k/s
    .venv/bin/python bench/poll.py --quick    # 20k backlog, 3 s per rate

Starts its own PostgreSQL (EmbeddedPostgres) and broker (EmbeddedBroker, tansu). Both
relays run as subprocesses with the same Kafka settings (acks=all, linger 5 ms; the test
broker cannot do the idempotent producer, so it is off for both).

Measures, for each relay:

* **Drain rate**: the relay runs, idle and connected, then a backlog of N events commits
  in one transaction. Rate = N / (time from that commit until no row is pending).
* **Commit-to-ack latency** at a steady rate: a generator commits a small transaction
  every 5 ms (1k/s: 5 events each; 5k/s: 25) and notes the wall-clock time after each
  commit. A consumer in this process notes when each record arrives. Latency = arrival -
  commit, so it includes the consumer's fetch (an upper bound of commit-to-ack, the same
  for both relays). p50 and p99 over every event of the phase.

The naive relay: ``SELECT ... ORDER BY id LIMIT 2000 FOR UPDATE SKIP LOCKED`` in a
transaction, aiokafka ``send()`` per row (payload loaded as JSON and dumped compactly,
headers passed), wait for every future, ``UPDATE ... SET state = 'sent', sent_at = now()``,
commit; when nothing is pending it sleeps 100 ms (it has no LISTEN).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from relay import migrate  # noqa: E402
from relay._embedded import EmbeddedBroker, EmbeddedPostgres  # noqa: E402
from relay.config import Settings  # noqa: E402

TEMPLATE = "bench_template"
KEYS = 1000
TICK_S = 0.005
NAIVE_BATCH = 2000
NAIVE_IDLE_S = 0.1
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
PAYLOAD_SQL = (
    f"jsonb_build_object('order_id', g, 'customer', 'customer-' || (g % {KEYS}), "
    "'amount', round((g % 9973) / 7.0, 2), 'currency', 'EUR', "
    "'items', jsonb_build_array(jsonb_build_object('sku', 'sku-' || (g % 97), 'qty', 1 + g % 3), "
    "jsonb_build_object('sku', 'sku-' || (g % 89), 'qty', 2)), 'note', 'benchmark event')"
)


# -- the naive relay -----------------------------------------------------------------------


async def naive_relay(database_url: str, bootstrap_servers: str) -> None:
    """The straightforward relay the issue compares against."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5)
    await producer.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        while not stop.is_set():
            async with conn.transaction():
                cursor = await conn.execute(
                    "SELECT id, event_id::text, topic, key, payload, headers FROM outbox "
                    "WHERE state = 'pending' ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                    (NAIVE_BATCH,),
                )
                rows = await cursor.fetchall()
                futures = []
                for _id, event_id, topic, key, payload, headers in rows:
                    record_headers = [("event_id", event_id.encode())]
                    record_headers += [(k, str(v).encode()) for k, v in headers.items()]
                    futures.append(
                        await producer.send(
                            topic,
                            json.dumps(payload, separators=(",", ":")).encode(),
                            key=key.encode() if key is not None else None,
                            headers=record_headers,
                        )
                    )
                await asyncio.gather(*futures)
                if rows:
                    await conn.execute(
                        "UPDATE outbox SET state = 'sent', sent_at = now() WHERE id = ANY(%s)",
                        ([row[0] for row in rows],),
                    )
            if not rows:
                await asyncio.sleep(NAIVE_IDLE_S)
    await producer.stop()


# -- harness -------------------------------------------------------------------------------


def new_database(cluster: EmbeddedPostgres) -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    return cluster.url_for(name)


@contextlib.contextmanager
def relay(kind: str, database_url: str, bootstrap_servers: str, log: Path) -> Iterator[None]:
    if kind == "ours":
        command = [
            sys.executable, "-m", "relay", "run",
            "--database-url", database_url,
            "--bootstrap-servers", bootstrap_servers,
            "--kafka-enable-idempotence", "false",
            "--log-level", "warning", "--log-format", "json",
        ]  # fmt: skip
    else:
        command = [sys.executable, __file__, "--naive-relay", database_url, bootstrap_servers]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    with log.open("ab") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, cwd=REPO, env=env
        )
    try:
        time.sleep(3.0)  # connected, leading, idle
        if process.poll() is not None:
            raise SystemExit(f"{kind} relay exited early; see {log}")
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def drain(
    kind: str, cluster: EmbeddedPostgres, broker: EmbeddedBroker, events: int, log: Path
) -> float:
    url = new_database(cluster)
    topic = f"drain-{kind}-{uuid.uuid4().hex[:6]}"
    with (
        relay(kind, url, broker.bootstrap_servers, log),
        psycopg.connect(url, autocommit=True) as conn,
    ):
        with conn.transaction():
            conn.execute(
                "INSERT INTO outbox (topic, key, payload, headers) "
                f"SELECT %s, 'customer-' || (g %% {KEYS}), {PAYLOAD_SQL.replace('%', '%%')}, "
                "jsonb_build_object('traceparent', %s::text) FROM generate_series(1, %s) AS g",
                (topic, TRACEPARENT, events),
            )
        started = time.monotonic()
        while conn.execute("SELECT EXISTS (SELECT FROM outbox WHERE state = 'pending')").fetchone()[
            0
        ]:  # type: ignore[index]
            time.sleep(0.02)
            if time.monotonic() - started > 600:
                raise SystemExit(f"{kind} relay did not drain within 10 minutes; see {log}")
        elapsed = time.monotonic() - started
    return events / elapsed


async def steady(  # noqa: C901 - generator, consumer and bookkeeping read best together
    url: str, bootstrap_servers: str, topic: str, rate: int, seconds: float
) -> list[float]:
    """Commit `rate` events/s for `seconds`; latencies (s) from commit to consumer arrival."""
    committed: dict[str, float] = {}
    arrived: dict[str, float] = {}
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap_servers, auto_offset_reset="earliest",
        fetch_max_wait_ms=5, metadata_max_age_ms=500,
    )  # fmt: skip
    # Create the topic first, so the consumer is assigned its partitions before load starts.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    await producer.partitions_for(topic)
    await producer.stop()
    await consumer.start()
    per_tick = max(1, round(rate * TICK_S))
    done = asyncio.Event()

    async def consume() -> None:
        while not (done.is_set() and len(arrived) >= len(committed)):
            batches = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for records in batches.values():
                for record in records:
                    for name, value in record.headers:
                        if name == "event_id":
                            arrived.setdefault(value.decode(), now)

    reader = asyncio.create_task(consume())
    await asyncio.sleep(1.0)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        started = time.monotonic()
        ticks = 0
        while time.monotonic() - started < seconds:
            async with conn.transaction():
                cursor = await conn.execute(
                    "INSERT INTO outbox (topic, key, payload, headers) "
                    f"SELECT %s, 'customer-' || (g %% {KEYS}), {PAYLOAD_SQL.replace('%', '%%')}, "
                    "jsonb_build_object('traceparent', %s::text) "
                    "FROM generate_series(%s::int, %s::int) AS g RETURNING event_id::text",
                    (topic, TRACEPARENT, ticks * per_tick, (ticks + 1) * per_tick - 1),
                )
                ids = [row[0] for row in await cursor.fetchall()]
            now = time.time()
            for event_id in ids:
                committed[event_id] = now
            ticks += 1
            delay = started + ticks * TICK_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        achieved = len(committed) / (time.monotonic() - started)
    done.set()
    try:
        await asyncio.wait_for(reader, 60)
    except TimeoutError:
        print(f"  warning: {len(committed) - len(arrived)} events did not arrive within 60 s")
    await consumer.stop()
    print(f"  generator: {achieved:.0f} events/s committed")
    return [arrived[event_id] - at for event_id, at in committed.items() if event_id in arrived]


def percentile(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[round(p * 10) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="backlog size for the drain")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each steady phase")
    parser.add_argument("--rates", default="1000,5000", help="steady rates, events/s")
    parser.add_argument("--quick", action="store_true", help="20k backlog, 3 s per rate")
    parser.add_argument(
        "--naive-relay", nargs=2, metavar=("URL", "BOOTSTRAP"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.naive_relay:
        asyncio.run(naive_relay(*args.naive_relay))
        return
    if args.quick:
        args.events, args.seconds = 20_000, 3.0
    rates = [int(rate) for rate in args.rates.split(",")]
    logs = Path(tempfile.mkdtemp(prefix="outbox-bench-"))
    print(
        f"outbox-relay poll benchmark (logs in {logs}); cpus: {os.cpu_count()}, "
        f"load average: {os.getloadavg()[0]:.1f}"
    )
    with EmbeddedPostgres() as cluster, EmbeddedBroker(log_file=logs / "broker.log") as broker:
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {TEMPLATE}")
        migrate.apply(Settings(database_url=cluster.url_for(TEMPLATE)))
        results: dict[str, dict[str, float]] = {"ours": {}, "naive": {}}
        for kind in ("ours", "naive"):
            print(f"[{kind}] draining a backlog of {args.events} events ...")
            rate = drain(kind, cluster, broker, args.events, logs / f"{kind}-drain.log")
            results[kind]["drain"] = rate
            print(f"  {rate:,.0f} events/s")
            for steady_rate in rates:
                print(f"[{kind}] steady {steady_rate} events/s for {args.seconds:.0f} s ...")
                url = new_database(cluster)
                topic = f"steady-{kind}-{steady_rate}-{uuid.uuid4().hex[:6]}"
                with relay(kind, url, broker.bootstrap_servers, logs / f"{kind}-{steady_rate}.log"):
                    latencies = asyncio.run(
                        steady(url, broker.bootstrap_servers, topic, steady_rate, args.seconds)
                    )
                p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
                results[kind][f"p50@{steady_rate}"], results[kind][f"p99@{steady_rate}"] = p50, p99
                print(
                    f"  commit-to-ack p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(latencies)} events)"
                )
    print()
    print(f"{'metric':<24}{'ours':>14}{'naive':>14}{'ours vs naive':>16}")
    ours, naive = results["ours"], results["naive"]
    print(
        f"{'drain (events/s)':<24}{ours['drain']:>14,.0f}{naive['drain']:>14,.0f}"
        f"{ours['drain'] / naive['drain']:>15.2f}x"
    )
    for steady_rate in rates:
        for p in ("p50", "p99"):
            name = f"{p}@{steady_rate}"
            print(
                f"{name + ' latency (ms)':<24}{ours[name]:>14.1f}{naive[name]:>14.1f}"
                f"{naive[name] / ours[name]:>15.2f}x"
            )
    print("(latency ratio: naive / ours, higher is better for ours; machine shared and busy)")


if __name__ == "__main__":
    main()
