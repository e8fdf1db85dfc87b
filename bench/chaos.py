"""A seed-driven randomized fault run, ended by an independent consumer's verdict.

    .venv/bin/python bench/chaos.py --mode poll --seconds 120 --seed 7
    .venv/bin/python bench/chaos.py --mode wal --seconds 300

Starts its own PostgreSQL (wal_level=logical) and broker, a TCP proxy of the tests' own
between the relays and the broker (the broker advertises the proxy, so every Kafka
connection goes through it, not only the bootstrap), and two relays (a leader and a hot
standby) with ``--on-sent mark``. A writer commits events for a few hundred keys at a
steady rate, one writer per key, and now and then a poison event (larger than the relays'
request size) that is parked and holds its key. Meanwhile, at random, seeded:

* a relay is killed with SIGKILL and started again;
* PostgreSQL restarts, ``-m fast`` or ``-m immediate``;
* the broker path is refused (connections reset, port closed) or blackholed (open,
  forwarding nothing) for a few seconds;
* one relay connection is ended with ``pg_terminate_backend``;
* an operator runs ``outbox-relay retry --all`` or ``skip --all`` through the CLI.

Then the faults stop, the proxy heals, the parked events are skipped, the relays drain
and stop, and a consumer of its own (through the healed proxy: the broker advertises no
other address) judges with the tests' order oracle: nothing missing, per key first and
last copies in outbox order, duplicates no more than the crash windows allow (three
batches per fault that ends a relay's session). It prints the seed first; a failing seed
becomes a regression test. Exit 0 when the verdict is clean, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from relay import migrate  # noqa: E402
from relay._embedded import EmbeddedBroker, EmbeddedPostgres, free_port  # noqa: E402
from relay.config import Settings  # noqa: E402
from tests.oracle import Expected, check  # noqa: E402
from tests.support import consume  # noqa: E402
from tests.tcp_proxy import TcpProxy  # noqa: E402

MAX_REQUEST_BYTES = 200_000
BATCH_SIZE = 500
POISON_BYTES = 300_000
FAULTS = (
    "kill",
    "pg_restart_fast",
    "pg_restart_immediate",
    "refuse",
    "blackhole",
    "terminate",
    "retry",
    "skip",
)


class Relay:
    """One ``outbox-relay run`` subprocess that can be killed and started again."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.args, self.env, self.log = name, args, env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "relay", "run", *self.args],
                stdout=output,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=REPO,
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


class Writer(threading.Thread):
    """Commits events at `rate`/s in small transactions until stopped."""

    def __init__(self, url: str, topic: str, keys: int, rate: float, rng: random.Random) -> None:
        super().__init__(name="writer", daemon=True)
        self.url, self.topic, self.keys, self.rate, self.rng = url, topic, keys, rate, rng
        self.stop = threading.Event()
        self.written = 0
        self.poison = 0
        self.failed_commits = 0

    def run(self) -> None:
        n = 0
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        while not self.stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.url, connect_timeout=5)
                with conn.transaction():
                    for _ in range(5):
                        key = f"k{self.rng.randrange(self.keys)}"
                        poison = self.rng.random() < 0.002
                        pad = "x" * (POISON_BYTES if poison else 20)
                        payload = f'{{"n": {n}, "pad": "{pad}"}}'
                        conn.execute(
                            "INSERT INTO outbox (topic, key, payload) VALUES (%s, %s, %s)",
                            (self.topic, key, payload),
                        )
                        n += 1
                        self.poison += poison
                self.written = n
            except psycopg.Error:
                self.failed_commits += 1
                with contextlib.suppress(Exception):
                    if conn is not None:
                        conn.close()
                conn = None
                time.sleep(0.5)
                continue
            time.sleep(5 / self.rate)
        if conn is not None:
            conn.close()


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args, "--database-url", url],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
        timeout=120,
    )


def query(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        return conn.execute(sql).fetchall()


def wait_for(what: str, check_fn: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(psycopg.Error):
            if check_fn():
                return True
        time.sleep(0.5)
    print(f"  timed out waiting for {what}")
    return False


@contextlib.contextmanager
def stack(base: Path) -> Iterator[tuple[EmbeddedPostgres, EmbeddedBroker, TcpProxy]]:
    """PostgreSQL, the broker, and the proxy in front of the broker.

    The broker advertises the proxy's port: Kafka clients bootstrap once and then connect
    where the metadata says, so a broker advertising itself would see the relays' produce
    connections bypass the proxy, and refuse and blackhole would cut nothing but new
    bootstraps. The proxy listens first, on its own port, forwarding to the broker's.
    """
    broker_port = free_port()
    with (
        # Durable commits: -m immediate is a crash, and with synchronous_commit off a
        # crash forgets commits that sessions (and poll mode) already saw.
        EmbeddedPostgres(settings={"synchronous_commit": "on"}) as postgres,
        TcpProxy("127.0.0.1", broker_port) as proxy,
        EmbeddedBroker(
            broker_port, log_file=base / "broker.log", advertised_port=proxy.port
        ) as broker,
    ):
        yield postgres, broker, proxy


def inject(  # noqa: PLR0917 - the run's parts, passed as they are
    fault: str,
    rng: random.Random,
    relays: list[Relay],
    pg: EmbeddedPostgres,
    proxy: TcpProxy,
    url: str,
) -> None:
    """One fault, chosen and timed by `rng`."""
    if fault == "kill":
        relay = rng.choice(relays)
        relay.kill()
        time.sleep(rng.uniform(0.0, 2.0))
        relay.start()
    elif fault.startswith("pg_restart"):
        pg.stop("immediate" if fault.endswith("immediate") else "fast")
        time.sleep(rng.uniform(0.0, 2.0))
        pg.start()
    elif fault in ("refuse", "blackhole"):
        getattr(proxy, fault)()
        time.sleep(rng.uniform(1.0, 6.0))
        proxy.heal()
    elif fault == "terminate":
        with contextlib.suppress(psycopg.Error):
            rows = query(
                url,
                "SELECT pid FROM pg_stat_activity WHERE application_name "
                "LIKE 'outbox-relay%' AND pid <> pg_backend_pid()",
            )
            if rows:
                pid = rng.choice(rows)[0]
                query(url, f"SELECT pg_terminate_backend({int(str(pid))})")
    else:
        cli(url, fault, "--all", *(("--reason", "chaos") if fault == "skip" else ()))


def explain_unexpected(url: str, event_ids: list[str]) -> None:
    """Say what the table holds of records no sent row explains (none: a lost commit)."""
    if event_ids:
        rows = query(
            url,
            "SELECT event_id::text, state, id FROM outbox WHERE event_id::text = ANY(ARRAY["
            + ",".join(f"'{e}'" for e in event_ids[:5])
            + "])",
        )
        print(f"  unexpected records, their rows in the table: {rows}")


def drain(url: str) -> bool:
    """Give up on what is parked (the poison), then wait for the relays to drain.

    Rows still pending then are printed with their xmin (never updated: never marked).
    """

    def drained() -> bool:
        cli(url, "skip", "--all", "--reason", "chaos end")
        return query(url, "SELECT count(*) FROM outbox WHERE state = 'pending'")[0][0] == 0

    if wait_for("the relays to drain", drained, timeout_s=240):
        return True
    stuck = query(
        url,
        "SELECT id, key, xmin::text FROM outbox WHERE state = 'pending' ORDER BY id LIMIT 20",
    )
    print(f"  rows still pending (id, key, xmin): {stuck}")
    return False


def all_through(url: str, forwarded: int) -> bool:
    """Whether the relays' traffic went through the proxy: at least every sent payload.

    Fewer bytes mean the produce requests reached the broker some other way (its own
    advertised address), and the proxy's outages cut nothing.
    """
    sent_bytes = int(
        str(
            query(
                url,
                "SELECT coalesce(sum(octet_length(payload::text)), 0) FROM outbox "
                "WHERE state = 'sent'",
            )[0][0]
        )
    )
    print(f"  bytes to the broker through the proxy: {forwarded} (sent payloads {sent_bytes})")
    return forwarded >= sent_bytes


def around_inversion(positions: list[int], ids: list[object]) -> list[object]:
    """The row ids around the first copy that arrived after a newer one of its key."""
    first = next((i for i in range(1, len(positions)) if positions[i] < positions[i - 1]), 0)
    return [ids[p] for p in positions[max(0, first - 4) : first + 4]]


def keep_logs(tmp: Path, keep: Path | None) -> None:
    """Copy the run's logs (relays, broker) to `keep`, if given, before `tmp` goes."""
    if keep is None:
        return
    keep.mkdir(parents=True, exist_ok=True)
    for log in tmp.glob("*.log"):
        shutil.copy(log, keep / log.name)


def run(  # noqa: PLR0917 - the command line, as it is
    mode: str,
    seconds: float,
    seed: int,
    rate: float,
    keys: int,
    keep: Path | None = None,
    log_level: str = "info",
) -> bool:
    rng = random.Random(seed)
    print(f"chaos: seed={seed} mode={mode} seconds={seconds:.0f} rate={rate:.0f}/s keys={keys}")
    topic = f"chaos-{uuid.uuid4().hex[:8]}"
    with (
        tempfile.TemporaryDirectory(prefix="chaos-") as tmp,
        stack(Path(tmp)) as (pg, broker, proxy),
    ):
        url = pg.url
        migrate.apply(Settings(database_url=url))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        args = [
            "--mode", mode,
            "--database-url", url,
            "--bootstrap-servers", proxy.address,
            "--kafka-enable-idempotence", "false",
            "--kafka-max-request-size", str(MAX_REQUEST_BYTES),
            "--kafka-request-timeout-ms", "5000",
            "--park-after-attempts", "2",
            "--batch-size", str(BATCH_SIZE),
            "--poll-interval", "0.2",
            "--log-format", "json",
            "--log-level", log_level,
        ]  # fmt: skip
        relays = [
            Relay(name, args, env, Path(tmp) / f"{name}.log") for name in ("relay-a", "relay-b")
        ]
        for relay in relays:
            relay.start()
        # Its own generator: the fault sequence depends on the seed alone.
        writer = Writer(url, topic, keys, rate, random.Random(seed + 1))
        writer.start()
        faults: Counter[str] = Counter()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(1.0, 4.0))
            fault = rng.choice(FAULTS)
            faults[fault] += 1
            print(f"  t={seconds - (deadline - time.monotonic()):6.1f}s fault: {fault}")
            inject(fault, rng, relays, pg, proxy, url)
        writer.stop.set()
        writer.join()
        proxy.heal()
        print(f"  faults: {dict(faults)}; written {writer.written} ({writer.poison} poison)")

        ok_drain = drain(url)
        codes = [relay.stop() for relay in relays]
        keep_logs(Path(tmp), keep)
        proxied = all_through(url, proxy.forwarded_upstream)
        rows = query(
            url,
            "SELECT event_id::text, key, topic, state, id FROM outbox ORDER BY id",
        )
        innocent_skipped = query(
            url,
            "SELECT count(*) FROM outbox WHERE state = 'skipped' "
            f"AND octet_length(payload::text) < {POISON_BYTES}",
        )[0][0]
        sent = [row for row in rows if row[3] == "sent"]
        expected = [Expected(str(e), str(k), str(t)) for e, k, t, _state, _id in sent]
        #: Row ids by position in `expected`: what a disorder's positions are.
        ids = [row[4] for row in sent]
        skipped = {str(row[0]) for row in rows if row[3] == "skipped"}
        records = asyncio.run(
            consume(broker.bootstrap_servers, [topic], expected=len(expected), timeout_s=120)
        )
        # A skipped event may have reached Kafka before an attempt failed: not a loss.
        records = [r for r in records if r.event_id not in skipped]
        verdict = check(records, expected)
        explain_unexpected(url, verdict.unexpected)
    print(f"  relays exited {codes}; drained: {ok_drain}; skipped: {len(skipped)}")
    print(f"  innocent events parked and skipped (not poison): {innocent_skipped}")
    print(
        f"verdict: {len(expected)} sent, {len(records)} records, missing {len(verdict.missing)}, "
        f"unexpected {len(verdict.unexpected)}, duplicates {verdict.duplicates}, "
        f"first-copy disorder {len(verdict.first_copy_disorder)} keys, "
        f"last-copy disorder {len(verdict.last_copy_disorder)} keys, "
        f"split {len(verdict.split_keys)} keys"
    )
    for key, positions in list(verdict.first_copy_disorder.items())[:3]:
        print(f"  first copies of {key} (row ids): {around_inversion(positions, ids)}")
    for key, positions in list(verdict.last_copy_disorder.items())[:3]:
        print(f"  last copies of {key} (row ids): {around_inversion(positions, ids)}")
    # Every fault that ends a relay's session opens one crash window: at most the
    # batches in flight then (one publishing, two being marked) come again.
    windows = sum(faults[f] for f in ("kill", "pg_restart_fast", "pg_restart_immediate"))
    windows += faults["terminate"] + faults["refuse"] + faults["blackhole"]
    duplicate_bound = max(windows, 1) * 3 * BATCH_SIZE
    print(f"  duplicates allowed by {windows} crash windows: {duplicate_bound}")
    clean = (
        ok_drain
        and proxied
        and not (
            verdict.missing
            or verdict.unexpected
            or verdict.first_copy_disorder
            or verdict.last_copy_disorder
            or verdict.split_keys
            or verdict.duplicates > duplicate_bound
        )
    )
    print(f"{'OK' if clean else 'FAILED'}: seed {seed}")
    return clean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["poll", "wal"], default="poll")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--rate", type=float, default=500.0, help="events per second")
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--keep", type=Path, default=None, help="copy the logs here")
    parser.add_argument("--log-level", default="info", help="the relays' --log-level")
    options = parser.parse_args()
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(10**6)
    clean = run(
        options.mode,
        options.seconds,
        seed,
        options.rate,
        options.keys,
        keep=options.keep,
        log_level=options.log_level,
    )
    sys.exit(0 if clean else 1)


if __name__ == "__main__":
    main()
