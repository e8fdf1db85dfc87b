"""WAL mode in operation, under live writes: two relays and a kill -9, lost slots, the
operator's `retry` and `skip`, PostgreSQL restarts while the relay lags.

Every relay here is ``outbox-relay run`` in a subprocess, as production runs it, and every
verdict is the order oracle's (tests/oracle.py) against the outbox table. The writer is
one thread committing one event per transaction, so the rows' id order is their commit
order (the order the oracle checks) even while it shares keys with the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import queue
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from relay import migrate
from relay._embedded import EmbeddedBroker, EmbeddedPostgres
from relay.config import Mode, Settings
from relay.loop import MAX_PENDING_ACKS
from relay.slot import slot_status
from relay.wal import WalSource
from relay.wal import _source as wal_source
from tests.integration.poll_stack import (
    RelayProcess,
    async_wait_until,
    insert_events,
    relay_in_process,
    relay_process,
    states,
    wait_until,
)
from tests.integration.test_wal_relay import drop_slot_under_the_relay
from tests.oracle import assert_delivered, outbox_rows
from tests.support import Consumed, consume, run_cli
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

BATCH_SIZE = 100
#: What a relay killed (or cut off) may have had published and not yet recorded in the
#: table: the batch being published and up to `MAX_PENDING_ACKS` being marked
#: (relay/loop.py). Those, and only those, are published again.
IN_FLIGHT_BOUND = BATCH_SIZE * (1 + MAX_PENDING_ACKS)
KEYS = 10
#: The backlog a kill -9 test cuts short: large enough that the relay is still at it
#: (pending rows left) a poll after 1500 are sent, on a fast machine too (a 6000-event
#: backlog was once all sent within that poll).
KILL_BACKLOG = 20_000


def new_slot() -> str:
    """A slot name no other test uses (slots are cluster-wide)."""
    return f"s_{uuid.uuid4().hex[:12]}"


def wal_args(slot_name: str, *extra: str) -> tuple[str, ...]:
    """``outbox-relay run`` flags for WAL mode on `slot_name`."""
    return (
        "--mode", "wal",
        "--slot-name", slot_name,
        "--batch-size", str(BATCH_SIZE),
        "--heartbeat-interval", "0.5",
        *extra,
    )  # fmt: skip


class LiveWriter(threading.Thread):
    """Commits one event per transaction, key ``k<n % KEYS>``, payload ``{"n": n}``.

    Reconnects when the server goes away (a commit cut off may or may not have happened:
    the table says which). `inject` slips an event of a given key and size in as the next
    one, in the writer's own order.
    """

    def __init__(self, url: str, topic: str, first_n: int, pause_s: float = 0.002) -> None:
        super().__init__(name="live-writer", daemon=True)
        self.url = url
        self.topic = topic
        self.next_n = first_n
        self.pause_s = pause_s
        self.written = 0
        self.halt = threading.Event()
        self._injected: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()

    def inject(self, key: str, pad_bytes: int) -> None:
        """Write an event of `key` with `pad_bytes` of padding next."""
        self._injected.put((key, pad_bytes))

    def run(self) -> None:
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        while not self.halt.is_set():
            n = self.next_n
            try:
                key, pad = self._injected.get_nowait()
            except queue.Empty:
                key, pad = f"k{n % KEYS}", 0
            payload: dict[str, object] = {"n": n} | ({"pad": "x" * pad} if pad else {})
            try:
                if conn is None:
                    conn = psycopg.connect(self.url, autocommit=True, connect_timeout=2)
                conn.execute(
                    "INSERT INTO outbox (topic, key, payload) VALUES (%s, %s, %s)",
                    (self.topic, key, json.dumps(payload)),
                )
                self.written += 1
            except psycopg.OperationalError:
                if conn is not None:
                    conn.close()
                conn = None
                if pad:
                    self._injected.put((key, pad))
                time.sleep(0.1)
            self.next_n += 1
            time.sleep(self.pause_s)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        """Stop writing (idempotent)."""
        self.halt.set()
        self.join(10)


@contextlib.contextmanager
def live_writer(url: str, topic: str, first_n: int) -> Iterator[LiveWriter]:
    writer = LiveWriter(url, topic, first_n)
    writer.start()
    try:
        yield writer
    finally:
        writer.stop()


def sent(url: str) -> int:
    return states(url).get("sent", 0)


def nothing_pending(url: str) -> bool:
    return "pending" not in states(url)


def wait_written(writer: LiveWriter, more: int) -> None:
    """Let the writer commit `more` events beyond what it has written so far."""
    target = writer.written + more
    wait_until(f"{more} more events written", lambda: writer.written >= target, timeout_s=30)


def kill_mid_stream(relay: RelayProcess, url: str, at_least_sent: int) -> dict[str, int]:
    """SIGKILL `relay` once `at_least_sent` rows are sent; the states just before."""
    wait_until("a part sent", lambda: sent(url) >= at_least_sent)
    before = states(url)
    relay.kill()
    assert before.get("pending", 0) > 0, f"not mid-stream: {before}"
    return before


def records_of(bootstrap_servers: str, topic: str, expected: int) -> list[Consumed]:
    return asyncio.run(consume(bootstrap_servers, [topic], expected=expected, idle_s=1.0))


def wait_published(bootstrap_servers: str, topic: str, count: int) -> None:
    """Wait until `count` records reached `topic` (with --on-sent none the table says nothing)."""
    got = asyncio.run(consume(bootstrap_servers, [topic], expected=count, idle_s=0, timeout_s=20))
    assert len(got) >= count


# -- Two relays, kill -9 ------------------------------------------------------------------


def test_two_wal_relays_the_leader_killed_mid_stream_the_standby_takes_over(
    settings: Settings, topic: str, tmp_path: Path
) -> None:
    url = settings.database_url
    args = wal_args(new_slot())
    with contextlib.ExitStack() as stack:
        leader = stack.enter_context(relay_process(settings, tmp_path / "a.log", *args))
        wait_until("a leader", lambda: leader.logged("streaming the outbox from the WAL"))
        standby = stack.enter_context(relay_process(settings, tmp_path / "b.log", *args))
        wait_until("a standby", lambda: standby.logged("standing by: another relay is the leader"))
        insert_events(url, topic, KILL_BACKLOG, keys=KEYS)  # a backlog, then live writes
        writer = stack.enter_context(live_writer(url, topic, first_n=KILL_BACKLOG))
        kill_mid_stream(leader, url, at_least_sent=1500)
        killed = time.monotonic()
        wait_until("takeover", lambda: standby.logged("leadership acquired"), timeout_s=30)
        assert time.monotonic() - killed < 10
        wait_written(writer, 100)  # live writes go on under the new leader
        writer.stop()
        wait_until("everything sent", lambda: nothing_pending(url))
        assert standby.process.poll() is None
    expected = outbox_rows(url)
    records = records_of(settings.bootstrap_servers, topic, len(expected))
    # The leader was dead before the standby led: the last copies keep order too.
    assert_delivered(records, expected, max_duplicates=IN_FLIGHT_BOUND)
    assert len(expected) > KILL_BACKLOG + 100


def test_kill_9_under_load_publishes_again_only_what_was_in_flight(
    settings: Settings, topic: str, tmp_path: Path
) -> None:
    """The duplicate bound: batch size x (1 publishing + MAX_PENDING_ACKS marking)."""
    url = settings.database_url
    args = wal_args(new_slot())
    log = tmp_path / "relay.log"
    with relay_process(settings, log, *args) as first:
        wait_until("streaming", lambda: first.logged("streaming the outbox from the WAL"))
        insert_events(url, topic, KILL_BACKLOG, keys=KEYS)
        with live_writer(url, topic, first_n=KILL_BACKLOG) as writer:
            kill_mid_stream(first, url, at_least_sent=1500)
            wait_written(writer, 100)  # written while no relay runs
            with relay_process(settings, log, *args):
                wait_written(writer, 100)
                writer.stop()
                wait_until("everything sent", lambda: nothing_pending(url))
    expected = outbox_rows(url)
    records = records_of(settings.bootstrap_servers, topic, len(expected))
    assert_delivered(records, expected, max_duplicates=IN_FLIGHT_BOUND)


# -- Lost slots -----------------------------------------------------------------------------

SLOT_LOST = (
    "replication slot lost: its WAL was removed; recreating it and publishing pending "
    "rows from the table"
)
SLOT_DISAPPEARED = (
    "replication slot disappeared; recreating it and publishing pending rows from the table"
)


@pytest.fixture
def small_wal_cluster() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of the test's own that keeps one WAL segment for a lagging slot."""
    with EmbeddedPostgres(settings={"max_slot_wal_keep_size": "16MB"}) as cluster:
        migrate.apply(Settings(database_url=cluster.url))
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE filler (id bigserial, filler text)")
        yield cluster


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(log_file=tmp_path / "broker.log") as broker:
        yield broker


def slot_wal_status(url: str, slot_name: str) -> str | None:
    with psycopg.connect(url) as conn:
        status = slot_status(conn, slot_name)
    return status.wal_status if status is not None else None


def push_the_slot_past_max_slot_wal_keep_size(url: str) -> None:
    """Write WAL in another table across a few segments, then checkpoint: the slot's
    oldest segment goes, and with it the slot (the checkpointer ends its walsender)."""
    # Bounded: a checkpoint that cannot end fails the test instead of hanging the suite.
    with psycopg.connect(url, autocommit=True, options="-c statement_timeout=60s") as conn:
        for _ in range(4):
            conn.execute("INSERT INTO filler (filler) SELECT repeat('x', 100)")
            conn.execute("SELECT pg_switch_wal()")
        conn.execute("CHECKPOINT")


def test_a_slot_invalidated_by_max_slot_wal_keep_size_under_live_writes_loses_nothing(
    settings: Settings,
    topic: str,
    tmp_path: Path,
    small_wal_cluster: EmbeddedPostgres,
    private_broker: EmbeddedBroker,
) -> None:
    """The broker hangs, the slot cannot confirm, the server removes its WAL: the relay
    says so, recreates the slot and publishes the pending rows from the table."""
    url = small_wal_cluster.url
    slot = new_slot()
    settings = dataclasses.replace(
        settings, database_url=url, bootstrap_servers=private_broker.bootstrap_servers
    )
    args = wal_args(slot, "--kafka-request-timeout-ms", "2000")
    with (
        relay_process(settings, tmp_path / "relay.log", *args) as relay,
        live_writer(url, topic, first_n=0) as writer,
    ):
        wait_until("a part sent", lambda: sent(url) >= 300)
        private_broker.pause()  # a blackhole: connections stay open, nothing answers
        try:
            wait_written(writer, 100)
            push_the_slot_past_max_slot_wal_keep_size(url)
            wait_until("the slot lost", lambda: slot_wal_status(url, slot) in ("lost", None))
            wait_written(writer, 100)
        finally:
            private_broker.resume()
        wait_until("the relay notices", lambda: relay.logged(SLOT_LOST), timeout_s=30)
        wait_written(writer, 100)
        writer.stop()
        wait_until("everything sent", lambda: nothing_pending(url))
        assert slot_wal_status(url, slot) in ("reserved", "extended")
    expected = outbox_rows(url)
    records = records_of(private_broker.bootstrap_servers, topic, len(expected))
    # No duplicate bound: the hung broker appends, once it runs again, the produce
    # requests the relay gave up on and sent again (no idempotent producer here).
    assert_delivered(records, expected)


def test_a_slot_dropped_under_live_writes_is_recreated_and_loses_nothing(
    settings: Settings, topic: str, tmp_path: Path
) -> None:
    url = settings.database_url
    slot = new_slot()
    with (
        relay_process(settings, tmp_path / "relay.log", *wal_args(slot)) as relay,
        live_writer(url, topic, first_n=0) as writer,
    ):
        wait_until("a part sent", lambda: sent(url) >= 300)
        drop_slot_under_the_relay(url, slot)
        wait_until("the relay notices", lambda: relay.logged(SLOT_DISAPPEARED), timeout_s=30)
        wait_written(writer, 150)
        writer.stop()
        wait_until("everything sent", lambda: nothing_pending(url))
    expected = outbox_rows(url)
    records = records_of(settings.bootstrap_servers, topic, len(expected))
    assert_delivered(records, expected, max_duplicates=IN_FLIGHT_BOUND)


@contextlib.contextmanager
def on_sent_none_relay(
    settings: Settings, topic: str, log: Path, slot_name: str
) -> Iterator[RelayProcess]:
    """A ``--on-sent none`` relay under live writes, streaming and publishing already."""
    args = wal_args(slot_name, "--on-sent", "none", "--poison", "skip")
    with (
        relay_process(settings, log, *args) as relay,
        live_writer(settings.database_url, topic, first_n=0),
    ):
        wait_until("streaming", lambda: relay.logged("streaming the outbox from the WAL"))
        wait_published(settings.bootstrap_servers, topic, 50)
        yield relay


def slot_disappeared(slot_name: str) -> str:
    """The error a ``--on-sent none`` relay stops with when its slot is gone."""
    return (
        f"replication slot {slot_name} disappeared and --on-sent none keeps no record of "
        "what was sent: events may be missing"
    )


def assert_stopped_with(relay: RelayProcess, error: str) -> None:
    """The relay exited 1 with `error` as its one last line, and no traceback."""
    try:
        code = relay.process.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError("the relay kept running after losing its slot") from None
    output = relay.log.read_text()
    assert code == 1, output[-2000:]
    assert output.splitlines()[-1] == f"outbox-relay: error: {error}"
    assert "Traceback" not in output


def test_on_sent_none_stops_the_relay_when_its_slot_is_dropped(
    settings: Settings, topic: str, tmp_path: Path
) -> None:
    """With --on-sent none only the slot knew what was sent: no silent new slot."""
    url = settings.database_url
    slot = new_slot()
    with on_sent_none_relay(settings, topic, tmp_path / "relay.log", slot) as relay:
        drop_slot_under_the_relay(url, slot)
        assert_stopped_with(relay, slot_disappeared(slot))
    assert slot_wal_status(url, slot) is None  # not recreated behind the operator's back
    assert states(url).keys() == {"pending"}  # and nothing marked


def test_on_sent_none_stops_the_relay_when_its_slot_is_invalidated(
    settings: Settings,
    topic: str,
    tmp_path: Path,
    small_wal_cluster: EmbeddedPostgres,
    private_broker: EmbeddedBroker,
) -> None:
    url = small_wal_cluster.url
    slot = new_slot()
    settings = dataclasses.replace(
        settings, database_url=url, bootstrap_servers=private_broker.bootstrap_servers
    )
    with on_sent_none_relay(settings, topic, tmp_path / "relay.log", slot) as relay:
        # The broker hangs, so the slot cannot confirm. (Not a stopped relay: its
        # walsender would block writing to it, and the checkpoint that invalidates the
        # slot waits for that walsender to exit.)
        private_broker.pause()
        try:
            push_the_slot_past_max_slot_wal_keep_size(url)
            wait_until("the slot lost", lambda: slot_wal_status(url, slot) == "lost")
        finally:
            private_broker.resume()
        assert_stopped_with(
            relay,
            f"replication slot {slot} lost WAL it needed and --on-sent none keeps no record "
            "of what was sent: events may be missing; drop the slot (outbox-relay slot drop) "
            "to start over",
        )
    assert slot_wal_status(url, slot) == "lost"  # left for the operator to see


# -- The operator's retry and skip ----------------------------------------------------------


def key_states(url: str, key: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT state, count(*) FROM outbox WHERE key = %s GROUP BY state", (key,)
        ).fetchall()
    return dict(rows)


#: How long the release sweep's first read is held up (a busy server): the window in which
#: the stream goes on queueing the released key's new rows before the hand-over is set.
SLOW_SWEEP_S = 0.5


async def test_retry_and_skip_through_the_cli_under_live_traffic_keep_every_key_in_order(
    settings: Settings, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two poison events (over the request size) park their keys while the writer goes
    on writing those keys and others; the operator fixes one and runs `retry`, then
    gives up on the other with `skip`, both mid-stream. The relay runs in-process (the
    whole of relay/run.py) so its release sweep can be slowed; the commands are the CLI.

    Without the slowdown the same race shows in about one run of fifteen on the 2-core
    machine (outbox-relay run in a subprocess, nothing patched).
    """
    monkeypatch.setattr(wal_source, "PARKED_REFRESH_S", 0.5)
    read_parked = WalSource._read_parked

    async def slow_sweep(
        source: WalSource, conn: psycopg.AsyncConnection[Any]
    ) -> dict[int, str | None]:
        if conn is source._sweep_conn:
            await asyncio.sleep(SLOW_SWEEP_S)
        return await read_parked(source, conn)

    monkeypatch.setattr(WalSource, "_read_parked", slow_sweep)
    url = settings.database_url
    settings = dataclasses.replace(
        settings,
        mode=Mode.WAL,
        slot_name=new_slot(),
        batch_size=BATCH_SIZE,
        heartbeat_interval=0.5,
        kafka_max_request_size=4096,
        park_after_attempts=1,
    )
    async with relay_in_process(settings):
        with live_writer(url, topic, first_n=0) as writer:
            await async_wait_until("a part sent", lambda: sent(url) >= 200)
            writer.inject("k3", 6000)
            writer.inject("k7", 6000)
            await async_wait_until("both parked", lambda: states(url).get("parked") == 2)
            await async_wait_until("k3 waits", lambda: key_states(url, "k3").get("pending", 0) > 5)
            assert key_states(url, "k5").get("pending", 0) < 10  # other keys flow

            with psycopg.connect(url) as conn:  # the operator makes the event fit
                conn.execute(
                    "UPDATE outbox SET payload = payload - 'pad' "
                    "WHERE key = 'k3' AND state = 'parked'"
                )
            retry = await asyncio.to_thread(run_cli, "retry", "--database-url", url, "--key", "k3")
            assert retry.returncode == 0, retry.stderr
            assert retry.stdout.startswith("released 1 parked events"), retry.stdout
            await async_wait_until("k3 flows", lambda: key_states(url, "k3").get("pending", 0) < 5)
            skip = await asyncio.to_thread(
                run_cli, "skip", "--database-url", url, "--key", "k7", "--reason", "poison, test"
            )
            assert skip.returncode == 0, skip.stderr
            await async_wait_until("k7 flows", lambda: key_states(url, "k7").get("pending", 0) < 5)
            target = writer.written + 100
            await async_wait_until("more written", lambda: writer.written >= target)
        await async_wait_until("everything sent", lambda: nothing_pending(url))
    assert states(url).get("skipped") == 1
    expected = outbox_rows(url, where="state = 'sent'")
    assert len(expected) == sum(states(url).values()) - 1
    records = await consume(settings.bootstrap_servers, [topic], expected=len(expected))
    # No crash, no reconnect: every event exactly once.
    assert_delivered(records, expected, max_duplicates=0)


# -- PostgreSQL restarts while the relay lags -------------------------------------------------


@pytest.fixture
def durable_cluster() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of the test's own with durable commits (a crash keeps what it showed)."""
    with EmbeddedPostgres(settings={"synchronous_commit": "on"}) as cluster:
        migrate.apply(Settings(database_url=cluster.url))
        yield cluster


@pytest.mark.parametrize("shutdown", ["fast", "immediate"])
def test_a_postgres_restart_while_the_relay_lags_under_live_writes(
    settings: Settings,
    topic: str,
    tmp_path: Path,
    durable_cluster: EmbeddedPostgres,
    *,
    proxied_broker: tuple[EmbeddedBroker, TcpProxy],
    shutdown: str,
) -> None:
    """A backlog half published, the writer writing, then ``pg_ctl stop -m <shutdown>``
    and start: the relay's sessions end, its leadership too, and a fresh source must
    neither publish again what was marked sent nor put an old copy after a newer one.

    The relay lags for certain, whatever the machine's speed: once part of the backlog
    is sent, the network to the broker goes dark, the rest of the backlog is written and
    streamed into the relay's queue but cannot leave it, and the restart comes then. The
    broker comes back after the restart.
    """
    broker, proxy = proxied_broker
    url = durable_cluster.url
    settings = dataclasses.replace(
        settings, database_url=url, bootstrap_servers=broker.bootstrap_servers
    )
    args = wal_args(new_slot(), "--kafka-request-timeout-ms", "3000")
    with relay_process(settings, tmp_path / "relay.log", *args) as relay:
        wait_until("streaming", lambda: relay.logged("streaming the outbox from the WAL"))
        insert_events(url, topic, 3000, keys=KEYS)
        with live_writer(url, topic, first_n=3000) as writer:
            wait_until("a part sent", lambda: sent(url) >= 1500)
            proxy.blackhole()
            insert_events(url, topic, 3000, keys=KEYS)
            wait_written(writer, 50)
            before = states(url)
            durable_cluster.stop(shutdown)
            assert before.get("pending", 0) >= 3000, f"not lagging: {before}"
            assert before.get("sent", 0) >= 1500, before
            durable_cluster.start()
            proxy.heal()
            wait_written(writer, 150)
            writer.stop()
            wait_until("everything sent", lambda: nothing_pending(url))
        assert relay.process.poll() is None
    expected = outbox_rows(url)
    records = records_of(settings.bootstrap_servers, topic, len(expected))
    assert_delivered(records, expected, max_duplicates=IN_FLIGHT_BOUND)


def test_on_sent_none_stops_when_the_slot_is_gone_after_a_lost_leadership_session(
    settings: Settings, topic: str, tmp_path: Path
) -> None:
    """The leadership session ends (a proxy, a failover) and the slot is dropped before
    the relay leads again: the next leadership session's source found no slot and made a
    new one, silently skipping what was written meanwhile."""
    url = settings.database_url
    slot = new_slot()
    with on_sent_none_relay(settings, topic, tmp_path / "relay.log", slot) as relay:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'outbox-relay leadership'"
            )
            # The relay stops leading, closes its stream and leads again: drop the slot
            # as soon as the walsender let go of it.
            for _ in range(500):
                try:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                    break
                except psycopg.errors.ObjectInUse:
                    time.sleep(0.01)
        assert_stopped_with(relay, slot_disappeared(slot))
    assert slot_wal_status(url, slot) is None
