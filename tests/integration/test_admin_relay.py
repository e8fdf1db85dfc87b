"""The operator commands beside a running relay (`outbox-relay run` in a subprocess).

What a user checks: what reaches Kafka after a replay, a retry or a purge, and that the
relay's promises (nothing unsent lost, per-key order) still hold while they run.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import psycopg
import pytest

from relay.config import Settings
from tests.integration.poll_stack import insert_events, relay_process, states, wait_until
from tests.integration.test_admin_commands import add_events
from tests.oracle import Expected, assert_delivered
from tests.support import Consumed, consume, run_cli

DAY_S = 86400.0


def event_ids(database_url: str, ids: list[int]) -> list[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT event_id::text FROM outbox WHERE id = ANY(%s) ORDER BY id", (ids,)
        ).fetchall()
    return [row[0] for row in rows]


def outbox_ids(database_url: str) -> dict[str, int]:
    """Row id of every event id in the outbox."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT event_id::text, id FROM outbox").fetchall()
    return dict(rows)


def nothing_pending(database_url: str) -> bool:
    return states(database_url).get("pending", 0) == 0


def assert_order_per_key(records: list[Consumed], position: dict[str, int]) -> None:
    """The oracle on the records `position` knows, in increasing position.

    Only events written by one writer, one transaction after the other, have an order
    to keep: between two concurrent transactions the outbox defines none.
    """
    subset = [r for r in records if r.event_id in position]
    unique = {r.event_id: r for r in subset}.values()
    expected = [
        Expected(r.event_id, r.key, r.topic)
        for r in sorted(unique, key=lambda r: position[r.event_id])
    ]
    assert_delivered(subset, expected)


def write_while(stop: threading.Event, database_url: str, topic: str, batches: int) -> None:
    """New events for the same keys, written by a service while an operator works."""
    for batch in range(batches):
        insert_events(database_url, topic, 100, keys=100, start=1_000_000 + batch * 100)
        if stop.wait(0.05):
            return


@pytest.mark.slow
async def test_replay_of_50k_events_delivers_exactly_the_selected_set(
    settings: Settings, topic: str, tmp_path: Path
) -> None:
    url = settings.database_url
    # Sent long ago (so not in Kafka any more, as far as this test is concerned).
    ids = add_events(
        url, 60_000, topic=topic, keys=100, state="sent", age_s=DAY_S, sent_age_s=DAY_S
    )
    selected = ids[5_000:55_000]
    selected_event_ids = event_ids(url, selected)
    stop = threading.Event()
    writer = threading.Thread(target=write_while, args=(stop, url, topic, 10))
    with relay_process(settings, tmp_path / "relay.log"):
        writer.start()
        try:
            replay = run_cli(
                "replay", "--database-url", url,
                "--from-id", str(selected[0]), "--to-id", str(selected[-1]),
                "--chunk-size", "2000", "--wait", "--wait-timeout", "5m",
                timeout=600,
            )  # fmt: skip
        finally:
            stop.set()
            writer.join()
        wait_until("the new events are sent", lambda: nothing_pending(url), timeout_s=300)
    assert replay.returncode == 0, replay.stderr
    assert "replayed 50,000 events as new pending rows" in replay.stdout
    assert "every copy was sent" in replay.stdout
    # The progress display: rate and ETA while it runs, and the end of both phases.
    assert "50,000/50,000 replayed  100%" in replay.stderr
    assert "50,000/50,000 published  100%" in replay.stderr
    assert "/s  " in replay.stderr

    new_events = states(url)["sent"] - 60_000 - 50_000
    records = await consume(
        settings.bootstrap_servers, [topic], expected=50_000 + new_events, timeout_s=300
    )
    copies = [r for r in records if "replay_of" in r.headers]
    assert len(copies) == 50_000
    assert sorted(r.headers["replay_of"].decode() for r in copies) == sorted(selected_event_ids)
    assert {r.headers["replayed"] for r in copies} == {b"true"}
    assert len(records) - len(copies) == new_events > 0
    # Per key, the copies go in the order of their originals, and the service's new
    # events in the order it wrote them, however the two interleave.
    row_id = outbox_ids(url)
    copy_position = {r.event_id: row_id[r.headers["replay_of"].decode()] for r in copies}
    assert_order_per_key(records, copy_position)
    new_position = {
        r.event_id: row_id[r.event_id] for r in records if r.event_id not in copy_position
    }
    assert_order_per_key(records, new_position)


def _add_keyed(database_url: str, topic: str, key: str, sizes: list[int]) -> None:
    with psycopg.connect(database_url) as conn:
        for n, pad in enumerate(sizes):
            conn.execute(
                "INSERT INTO outbox (topic, key, payload) "
                "VALUES (%s, %s, jsonb_build_object('n', %s::int, 'pad', repeat('x', %s)))",
                (topic, key, n, pad),
            )


async def test_retry_of_a_parked_key_delivers_it_in_order(
    settings: Settings, topic: str, tmp_path: Path
) -> None:
    url = settings.database_url
    _add_keyed(url, topic, "stuck", [10, 6000, 10, 10, 10])  # n=1 is too large at first
    _add_keyed(url, topic, "free", [10, 10, 10])
    with relay_process(
        settings, tmp_path / "small.log",
        "--kafka-max-request-size", "4096", "--park-after-attempts", "1",
    ):  # fmt: skip
        wait_until(
            "the large event parked and the rest of its key waiting",
            lambda: states(url) == {"sent": 4, "parked": 1, "pending": 3},
        )
    status = run_cli("status", "--database-url", url, "--max-parked", "0", "--json")
    assert status.returncode == 1
    assert json.loads(status.stdout)["parked"] == 1
    parked = run_cli("inspect", "--database-url", url, "--state", "parked", "--jsonl")
    [row] = [json.loads(line) for line in parked.stdout.splitlines()]
    assert (row["key"], row["payload"]["n"]) == ("stuck", 1)
    assert "larger than kafka_max_request_size" in row["last_error"]

    # The operator raises the limit, restarts the relay, and releases the key.
    with relay_process(settings, tmp_path / "large.log") as relay:
        wait_until("the relay leads", lambda: relay.logged("leadership acquired"))
        await asyncio.sleep(1.0)  # several polls: the key still waits behind its parked event
        assert states(url) == {"sent": 4, "parked": 1, "pending": 3}
        retry = run_cli("retry", "--database-url", url, "--key", "stuck")
        assert retry.returncode == 0, retry.stderr
        assert retry.stdout.startswith("released 1 parked events")
        wait_until("the key is sent", lambda: states(url) == {"sent": 8})
    records = await consume(settings.bootstrap_servers, [topic], expected=8)
    stuck = [
        json.loads(r.value or b"{}")["n"]
        for r in sorted(records, key=lambda r: (r.partition, r.offset))
        if r.key == "stuck"
    ]
    assert stuck == [0, 1, 2, 3, 4]
    healthy = run_cli("status", "--database-url", url, "--max-parked", "0", "--max-lag", "1m")
    assert healthy.returncode == 0, healthy.stdout


@pytest.mark.slow
async def test_purge_beside_a_running_relay_loses_nothing_unsent(
    settings: Settings, topic: str, tmp_path: Path
) -> None:
    url = settings.database_url
    old_sent = add_events(
        url, 20_000, topic=topic, keys=100, state="sent", age_s=10 * DAY_S, sent_age_s=10 * DAY_S
    )
    # A backlog as old as the purged events, never sent: it must reach Kafka, not the bin.
    old_pending = add_events(url, 500, topic=topic, keys=100, age_s=10 * DAY_S)
    old_parked = add_events(
        url, 5, topic=topic, key_prefix="parked", state="parked", age_s=10 * DAY_S
    )
    stop = threading.Event()
    writer = threading.Thread(target=write_while, args=(stop, url, topic, 30))
    with relay_process(settings, tmp_path / "relay.log"):
        writer.start()
        try:
            purge = run_cli(
                "purge", "--database-url", url, "--older-than", "7d", "--chunk-size", "500",
                timeout=300,
            )  # fmt: skip
        finally:
            stop.set()
            writer.join()
        wait_until("every event is sent", lambda: nothing_pending(url), timeout_s=300)
    assert purge.returncode == 0, purge.stderr
    assert purge.stdout.startswith("deleted 20,000 sent/skipped events created before")

    left = outbox_ids(url)
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id, state FROM outbox").fetchall()
    state_of: dict[int, str] = dict(rows)
    assert not set(old_sent) & set(state_of)
    assert {state_of[i] for i in old_pending} == {"sent"}
    assert {state_of[i] for i in old_parked} == {"parked"}
    unsent_before = len(left) - len(old_parked)
    records = await consume(settings.bootstrap_servers, [topic], expected=unsent_before)
    assert sorted(r.event_id for r in records) == sorted(
        event_id for event_id, row_id in left.items() if state_of[row_id] == "sent"
    )
