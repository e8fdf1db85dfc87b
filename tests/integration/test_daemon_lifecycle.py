"""Promises of the daemon's life: as PID 1 of its image, its summary, a leader cut off.

The image cannot be built here (no Docker engine), so the relay runs the way the image
runs it: its ENTRYPOINT and CMD, with the image's ENV, as PID 1 of a new PID namespace,
where the kernel drops every signal the process installed no handler for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from structlog.testing import capture_logs

from relay import run
from relay.config import Settings
from tests.integration.poll_stack import (
    all_sent,
    async_wait_until,
    insert_events,
    relay_in_process,
    relay_process,
    states,
    wait_until,
)
from tests.oracle import assert_delivered, outbox_rows
from tests.support import REPO, consume
from tests.unit.test_deploy_files import dockerfile_env, final_stage

BIN = Path(sys.executable).parent


def image_command() -> list[str]:
    """ENTRYPOINT + CMD of the image's final stage, the executable from this venv."""
    stage = dict(final_stage())
    command = json.loads(stage["ENTRYPOINT"]) + json.loads(stage["CMD"])
    return [str(BIN / command[0]), *command[1:]]


def namespace_init(unshare: subprocess.Popen[bytes]) -> int:
    """The host pid of the PID-1 process that `unshare --fork` started."""
    children = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = children.read_text().split()
        if pids:
            return int(pids[0])
        time.sleep(0.05)
    raise AssertionError("unshare started no child")


@pytest.mark.slow
def test_as_pid_1_of_its_image_sigterm_drains_and_exits_0(
    settings: Settings, topic: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env |= {k: v for k, v in dockerfile_env().items() if k.startswith(("RELAY_", "PYTHON"))}
    env |= {
        "RELAY_DATABASE_URL": settings.database_url,
        "RELAY_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "RELAY_KAFKA_ENABLE_IDEMPOTENCE": "false",
        "RELAY_HTTP_PORT": "0",
        "RELAY_POLL_INTERVAL": "0.2",
    }
    insert_events(settings.database_url, topic, 20_000, keys=20)
    log = tmp_path / "relay.log"
    with log.open("wb") as output:
        unshare = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", *image_command()],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    try:
        pid_1 = namespace_init(unshare)
        status = Path(f"/proc/{pid_1}/status").read_text().splitlines()
        nspid = next(line for line in status if line.startswith("NSpid:"))
        assert nspid.split()[-1] == "1", "the relay is not PID 1"
        wait_until("some sent", lambda: states(settings.database_url).get("sent", 0) > 0)
        os.kill(pid_1, signal.SIGTERM)
        stopped = time.monotonic()
        returncode = unshare.wait(settings.shutdown_timeout + 10)
        assert time.monotonic() - stopped < settings.shutdown_timeout
    finally:
        if unshare.poll() is None:
            unshare.kill()
            unshare.wait()
    assert returncode == 0, log.read_text()[-2000:]
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(line["event"] == "relay stopped" for line in lines), lines[-5:]


async def test_the_relay_logs_a_summary_at_info_every_interval(
    settings: Settings, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "SUMMARY_INTERVAL_S", 0.5)
    with capture_logs() as logs:
        async with relay_in_process(settings):
            await asyncio.to_thread(insert_events, settings.database_url, topic, 2000)
            await async_wait_until("all sent", all_sent(settings.database_url, 2000))
            await asyncio.sleep(1.2)
    summaries = [e for e in logs if e["event"] == "relay summary"]
    assert len(summaries) >= 2
    assert {e["log_level"] for e in summaries} == {"info"}
    assert summaries[-1]["published"] == 2000
    assert summaries[-1]["leader"] is True
    assert max(e["events_per_s"] for e in summaries) > 0


def leader_lock_pid(database_url: str) -> int | None:
    """The backend of the session that holds the relay's leadership lease."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pid FROM outbox_leader WHERE leader_until > now() "
            "AND pid IN (SELECT pid FROM pg_stat_activity)"
        ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


@pytest.mark.slow
def test_a_leader_whose_lock_session_is_terminated_stops_and_one_relay_leads(
    settings: Settings, topic: str, tmp_path: Path
) -> None:
    url = settings.database_url
    batch = ("--batch-size", "500")
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(relay_process(settings, tmp_path / "a.log", *batch))
        wait_until("a leader", lambda: first.logged("leadership acquired"))
        second = stack.enter_context(relay_process(settings, tmp_path / "b.log", *batch))
        wait_until("a standby", lambda: second.logged("standing by: another relay is the leader"))
        insert_events(url, topic, 30_000, keys=30)
        wait_until("a part sent", lambda: states(url).get("sent", 0) > 2000)
        pid = leader_lock_pid(url)
        assert pid is not None
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        terminated = time.monotonic()
        wait_until(
            "the leader notices",
            lambda: first.logged("leadership lost"),
            timeout_s=15,
        )
        assert time.monotonic() - terminated < 5  # noticed at once, not at the next check
        assert states(url).get("sent", 0) < 30_000, "too fast to cut the leader mid-stream"
        wait_until("all sent", all_sent(url, 30_000))
        # One leader again, holding the lease.
        assert leader_lock_pid(url) is not None
        assert first.process.poll() is None
        assert second.process.poll() is None
    records = asyncio.run(consume(settings.bootstrap_servers, [topic], expected=30_000))
    # Leadership moved with a batch in flight: the README allows last copies out of order
    # there, never first copies, and duplicates only from that window.
    assert_delivered(records, outbox_rows(url), max_duplicates=3 * 500, last_copies=False)
