"""What the poll-mode integration tests share: writing events, running relays, waiting."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psycopg

from relay.config import Settings
from relay.run import Relay
from tests.support import REPO, Consumed

WAIT_S = 90.0


def insert_events(
    database_url: str,
    topic: str,
    count: int,
    *,
    keys: int = 20,
    start: int = 0,
    headers: dict[str, str] | None = None,
) -> None:
    """Commit `count` events in one transaction: key ``k<n % keys>``, payload ``{"n": n}``."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO outbox (topic, key, payload, headers, event_type) "
            "SELECT %s, 'k' || (g %% %s::int), jsonb_build_object('n', g), %s::jsonb, 'Tested' "
            "FROM generate_series(%s::int, %s::int) AS g",
            (topic, keys, json.dumps(headers or {}), start, start + count - 1),
        )


def states(database_url: str) -> dict[str, int]:
    """How many outbox rows are in each state."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall()
    return dict(rows)


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    """Poll `check` until it is true; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


async def async_wait_until(what: str, check: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    """`wait_until` for async tests (the check runs in a thread: it may block)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(check):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def all_sent(database_url: str, total: int) -> Callable[[], bool]:
    """A check: every one of `total` rows is sent."""
    return lambda: states(database_url).get("sent", 0) == total


@contextlib.asynccontextmanager
async def relay_in_process(settings: Settings) -> AsyncIterator[Relay]:
    """A relay running in this event loop; stopped (as by SIGTERM) on exit."""
    relay = Relay(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield relay
        assert not task.done(), f"relay stopped early: {task.exception()!r}"
    finally:
        stop.set()
        await asyncio.wait_for(task, settings.shutdown_timeout + 10)


@dataclasses.dataclass
class RelayProcess:
    """``outbox-relay run`` in a subprocess, logging JSON lines to `log`."""

    process: subprocess.Popen[bytes]
    log: Path

    def lines(self) -> list[dict[str, object]]:
        """The relay's log lines so far."""
        result = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                result.append(json.loads(line))
        return result

    def logged(self, event: str) -> bool:
        """True when the relay logged `event`."""
        return any(line.get("event") == event for line in self.lines())

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye."""
        self.process.kill()
        self.process.wait()


@contextlib.contextmanager
def relay_process(settings: Settings, log: Path, *extra: str) -> Iterator[RelayProcess]:
    """Run the relay as production does; SIGTERM (then SIGKILL) on exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    with log.open("ab") as output:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "relay", "run",
                "--database-url", settings.database_url,
                "--bootstrap-servers", settings.bootstrap_servers,
                "--kafka-enable-idempotence", "false",
                "--poll-interval", "0.2",
                "--log-format", "json",
                *extra,
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )  # fmt: skip
    relay = RelayProcess(process, log)
    try:
        yield relay
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def payload_n(record: Consumed) -> int:
    """The ``n`` of a record written by `insert_events`."""
    assert record.value is not None
    n: int = json.loads(record.value)["n"]
    return n
