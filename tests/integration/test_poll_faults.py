"""Poll mode under faults: kills, broker and database outages, two relays, poison rows."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from relay import migrate
from relay._embedded import EmbeddedBroker, EmbeddedPostgres
from relay.config import PoisonPolicy, Settings
from tests.integration.poll_stack import (
    all_sent,
    async_wait_until,
    insert_events,
    payload_n,
    relay_in_process,
    relay_process,
    states,
    wait_until,
)
from tests.oracle import assert_delivered, outbox_rows
from tests.support import consume

pytestmark = pytest.mark.slow

BATCH = ("--batch-size", "500")


def sent_count(database_url: str) -> int:
    return states(database_url).get("sent", 0)


def test_sigkill_mid_stream_then_restart_loses_nothing(
    settings: Settings, topic: str, tmp_path: Path
) -> None:
    total = 30_000
    insert_events(settings.database_url, topic, total, keys=30)
    log = tmp_path / "relay.log"
    with relay_process(settings, log, "--batch-size", "500") as first:
        wait_until("a part sent", lambda: sent_count(settings.database_url) >= 2000)
        first.kill()
    assert sent_count(settings.database_url) < total, "too fast to kill mid-stream"
    with relay_process(settings, log, "--batch-size", "500"):
        wait_until("all sent", all_sent(settings.database_url, total))
    records = asyncio.run(consume(settings.bootstrap_servers, [topic], expected=total))
    assert {payload_n(r) for r in records} == set(range(total))
    # Duplicates only from the batches in flight at the kill (one publishing, two marking).
    assert_delivered(records, outbox_rows(settings.database_url), max_duplicates=3 * 500)


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(log_file=tmp_path / "broker.log") as broker:
        yield broker


async def test_broker_down_for_20_s_then_back_loses_nothing_and_needs_no_help(
    settings: Settings, topic: str, private_broker: EmbeddedBroker
) -> None:
    settings = dataclasses.replace(
        settings,
        bootstrap_servers=private_broker.bootstrap_servers,
        kafka_request_timeout_ms=5000,
    )
    url = settings.database_url
    async with relay_in_process(settings):
        await asyncio.to_thread(insert_events, url, topic, 1000)
        await async_wait_until("first part sent", all_sent(url, 1000))
        before = await consume(settings.bootstrap_servers, [topic], expected=1000)
        assert {payload_n(r) for r in before} == set(range(1000))

        private_broker.stop()
        await asyncio.to_thread(insert_events, url, topic, 1000, start=1000)
        await asyncio.sleep(20)
        # Nothing Kafka did not acknowledge is marked sent.
        assert sent_count(url) == 1000

        private_broker.start()  # same port, empty (in-memory storage)
        await async_wait_until("second part sent", all_sent(url, 2000))
    after = await consume(settings.bootstrap_servers, [topic], expected=1000)
    assert {payload_n(r) for r in after} == set(range(1000, 2000))
    second_part = outbox_rows(url, where="(payload->>'n')::int >= 1000")
    assert_delivered(after, second_part, max_duplicates=0)


async def test_postgres_restart_mid_stream_loses_nothing(
    broker: EmbeddedBroker, topic: str
) -> None:
    with EmbeddedPostgres() as cluster:
        settings = Settings(
            database_url=cluster.url,
            bootstrap_servers=broker.bootstrap_servers,
            kafka_enable_idempotence=False,
            poll_interval=0.2,
            batch_size=500,
        )
        migrate.apply(settings)
        async with relay_in_process(settings):
            await asyncio.to_thread(insert_events, cluster.url, topic, 5000)
            await async_wait_until("a part sent", lambda: sent_count(cluster.url) > 0)
            await asyncio.to_thread(cluster.restart)
            await asyncio.to_thread(insert_events, cluster.url, topic, 5000, start=5000)
            await async_wait_until("all sent", all_sent(cluster.url, 10_000))
        expected = outbox_rows(cluster.url)
    records = await consume(broker.bootstrap_servers, [topic], expected=10_000)
    assert {payload_n(r) for r in records} == set(range(10_000))
    assert_delivered(records, expected)


def test_two_relays_publish_each_event_once_and_the_standby_takes_over(
    settings: Settings, topic: str, tmp_path: Path
) -> None:
    url = settings.database_url
    with contextlib.ExitStack() as stack:
        leader = stack.enter_context(relay_process(settings, tmp_path / "a.log", *BATCH))
        wait_until("a leader", lambda: leader.logged("leadership acquired"))
        standby = stack.enter_context(relay_process(settings, tmp_path / "b.log", *BATCH))
        wait_until("a standby", lambda: standby.logged("standing by: another relay is the leader"))
        insert_events(url, topic, 3000, keys=30)
        wait_until("first part sent", all_sent(url, 3000))
        first = asyncio.run(consume(settings.bootstrap_servers, [topic], expected=3000))
        assert len(first) == 3000  # both relays running, each event published once
        assert not standby.logged("leadership acquired")

        insert_events(url, topic, 20_000, keys=30, start=3000)
        wait_until("more sent", lambda: sent_count(url) > 5000)
        leader.kill()
        killed = time.monotonic()
        wait_until("takeover", lambda: standby.logged("leadership acquired"), timeout_s=30)
        assert time.monotonic() - killed < 10
        wait_until("all sent", all_sent(url, 23_000))
    records = asyncio.run(consume(settings.bootstrap_servers, [topic], expected=23_000))
    assert {payload_n(r) for r in records} == set(range(23_000))
    # Duplicates from the crash window only; the leader was dead before the standby led,
    # so the last copies keep outbox order too.
    assert_delivered(records, outbox_rows(url), max_duplicates=3 * 500)


def poison_outbox(database_url: str, topic: str) -> dict[str, int]:
    """A poison event (a payload over the relay's request size) for key "bad", then more
    events of that key and of other keys. Returns the ids by name."""
    ids = {}
    with psycopg.connect(database_url) as conn:

        def add(name: str, key: str, payload: object) -> None:
            row = conn.execute(
                "INSERT INTO outbox (topic, key, payload) VALUES (%s, %s, %s) RETURNING id",
                (topic, key, json.dumps(payload)),
            ).fetchone()
            assert row is not None
            ids[name] = row[0]

        add("before", "bad", {"n": 0})
        add("poison", "bad", {"n": 1, "blob": "x" * 50_000})
        add("after1", "bad", {"n": 2})
        for n in range(20):
            add(f"other{n}", f"good{n % 4}", {"n": 100 + n})
        add("after2", "bad", {"n": 3})
    return ids


def row(database_url: str, id_: int) -> tuple[str, int, str | None]:
    with psycopg.connect(database_url) as conn:
        result = conn.execute(
            "SELECT state, attempts, last_error FROM outbox WHERE id = %s", (id_,)
        ).fetchone()
    assert result is not None
    return result[0], result[1], result[2]


async def test_a_poison_event_is_parked_its_key_waits_and_a_release_goes_first(
    settings: Settings, topic: str
) -> None:
    settings = dataclasses.replace(settings, kafka_max_request_size=20_000, park_after_attempts=2)
    url = settings.database_url
    ids = poison_outbox(url, topic)
    async with relay_in_process(settings):
        await async_wait_until("others sent", lambda: sent_count(url) == 21)
        await async_wait_until("parked", lambda: row(url, ids["poison"])[0] == "parked")
        _, attempts, error = row(url, ids["poison"])
        assert attempts == 2
        assert error is not None
        assert "larger than kafka_max_request_size" in error
        await asyncio.sleep(1)  # the key's later events keep waiting
        assert row(url, ids["after1"])[0] == "pending"
        assert row(url, ids["after2"])[0] == "pending"

        # The operator fixes the payload and releases the event, relay still running.
        with psycopg.connect(url) as conn:
            conn.execute(
                "UPDATE outbox SET payload = '{\"n\": 1}', state = 'pending' WHERE id = %s",
                (ids["poison"],),
            )
        await async_wait_until("all sent", all_sent(url, 24))
    records = await consume(settings.bootstrap_servers, [topic], expected=24)
    bad = sorted((r for r in records if r.key == "bad"), key=lambda r: r.offset)
    assert [payload_n(r) for r in bad] == [0, 1, 2, 3]
    assert len(records) == 24


async def test_with_poison_skip_the_key_flows_past_the_parked_event(
    settings: Settings, topic: str
) -> None:
    settings = dataclasses.replace(
        settings,
        kafka_max_request_size=20_000,
        park_after_attempts=2,
        poison=PoisonPolicy.SKIP,
    )
    url = settings.database_url
    ids = poison_outbox(url, topic)
    async with relay_in_process(settings):
        await async_wait_until("all but the poison sent", lambda: sent_count(url) == 23)
        await async_wait_until("parked", lambda: row(url, ids["poison"])[0] == "parked")
    records = await consume(settings.bootstrap_servers, [topic], expected=23)
    bad = sorted((r for r in records if r.key == "bad"), key=lambda r: r.offset)
    assert [payload_n(r) for r in bad] == [0, 2, 3]


def test_sigterm_while_the_broker_hangs_still_exits_0_within_the_shutdown_timeout(
    settings: Settings, topic: str, private_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = dataclasses.replace(settings, bootstrap_servers=private_broker.bootstrap_servers)
    url = settings.database_url
    with relay_process(settings, tmp_path / "relay.log", "--shutdown-timeout", "3") as relay:
        insert_events(url, topic, 100)
        wait_until("sent", all_sent(url, 100))
        private_broker.pause()  # connections stay open, nothing is answered
        try:
            insert_events(url, topic, 100, start=100)
            time.sleep(1)
            relay.process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            assert relay.process.wait(30) == 0
            assert time.monotonic() - started < 3 + 5 + 5  # shutdown, producer stop, slack
        finally:
            private_broker.resume()
    assert sent_count(url) == 100  # the unacknowledged batch stayed pending
