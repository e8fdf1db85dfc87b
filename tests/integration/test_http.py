"""/healthz, /readyz and /metrics on a running relay (``outbox-relay run`` in a subprocess)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay._embedded import EmbeddedBroker, free_port
from relay.config import Settings
from tests.integration.poll_stack import RelayProcess, relay_process
from tests.support import consume

WAIT_S = 60.0


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def sample(port: int, name: str, labels: dict[str, str] | None = None) -> float:
    """The value of one sample on /metrics (0 when the labelled child does not exist yet)."""
    status, body = http_get(port, "/metrics")
    assert status == 200
    for family in text_string_to_metric_families(body):
        for metric in family.samples:
            if metric.name == name and (labels is None or metric.labels == labels):
                return float(metric.value)
    return 0.0


class HttpRelay:
    """A relay subprocess with its HTTP endpoints on `port`."""

    def __init__(self, relay: RelayProcess, port: int) -> None:
        self.process = relay.process
        self.port = port
        self.log = relay.log

    def get(self, path: str) -> tuple[int, str]:
        assert self.process.poll() is None, f"relay exited: {self.log.read_text()[-2000:]}"
        return http_get(self.port, path)


@contextlib.contextmanager
def running_relay(settings: Settings, tmp_path: Path, *extra: str) -> Iterator[HttpRelay]:
    port = free_port()
    with relay_process(
        settings, tmp_path / "relay.log", "--http-port", str(port), *extra
    ) as process:
        relay = HttpRelay(process, port)
        wait_until("/healthz", lambda: relay.get("/healthz")[0] == 200)
        yield relay


def publish(
    database_url: str, topic: str, count: int, headers: dict[str, str] | None = None
) -> None:
    with psycopg.connect(database_url) as conn:
        conn.cursor().executemany(
            "SELECT outbox_publish(%s, %s, %s, %s)",
            [
                (topic, f"key-{n % 5}", json.dumps({"n": n}), json.dumps(headers or {}))
                for n in range(count)
            ],
        )


def test_healthz_readyz_and_metrics_follow_the_traffic(
    settings: Settings, topic: str, tmp_path: Path
) -> None:
    with running_relay(settings, tmp_path) as relay:
        assert relay.get("/healthz") == (200, "ok\n")
        wait_until("/readyz 200", lambda: relay.get("/readyz") == (200, "ready\n"))
        published = ("outbox_relay_events_published_total", {"topic": topic})
        assert sample(relay.port, *published) == 0

        publish(settings.database_url, topic, 40)
        wait_until("40 events published", lambda: sample(relay.port, *published) == 40)
        assert sample(relay.port, "outbox_relay_commit_to_ack_seconds_count") == 40
        assert sample(relay.port, "outbox_relay_batch_size_events_sum") == 40
        assert sample(relay.port, "outbox_relay_batch_size_events_count") >= 1

        publish(settings.database_url, topic, 25)
        wait_until("65 events published", lambda: sample(relay.port, *published) == 65)
        assert sample(relay.port, "outbox_relay_publish_errors_total") == 0
        assert relay.get("/readyz") == (200, "ready\n")
        records = asyncio.run(consume(settings.bootstrap_servers, [topic], expected=65))
        assert len({record.event_id for record in records}) == 65


@pytest.mark.slow
def test_readyz_turns_unready_when_the_broker_stops_and_ready_when_it_returns(
    settings: Settings, topic: str, tmp_path: Path
) -> None:
    broker = EmbeddedBroker(port=free_port(), log_file=tmp_path / "broker.log")
    broker.start()
    settings = Settings(
        database_url=settings.database_url,
        bootstrap_servers=broker.bootstrap_servers,
        kafka_enable_idempotence=False,
    )
    try:
        with running_relay(settings, tmp_path, "--kafka-request-timeout-ms", "3000") as relay:
            wait_until("/readyz 200", lambda: relay.get("/readyz")[0] == 200)
            publish(settings.database_url, topic, 3)
            published = ("outbox_relay_events_published_total", {"topic": topic})
            wait_until("3 events published", lambda: sample(relay.port, *published) == 3)

            broker.stop()
            publish(settings.database_url, topic, 2)  # the relay finds out when it publishes
            wait_until("/readyz 503", lambda: relay.get("/readyz")[0] == 503)
            status, reason = relay.get("/readyz")
            assert status == 503
            assert reason.startswith("not connected to the broker")
            assert relay.get("/healthz") == (200, "ok\n")  # alive: no restart needed
            wait_until(
                "2 pending events on /metrics",
                lambda: sample(relay.port, "outbox_relay_pending_events") == 2,
            )
            assert sample(relay.port, "outbox_relay_oldest_unsent_age_seconds") > 0

            broker.start()  # same port, empty storage
            wait_until("/readyz 200 again", lambda: relay.get("/readyz")[0] == 200)
            wait_until("5 events published", lambda: sample(relay.port, *published) == 5)
            wait_until(
                "no pending events on /metrics",
                lambda: sample(relay.port, "outbox_relay_pending_events") == 0,
            )
            # The two events written while the broker was down reached the new broker.
            records = asyncio.run(consume(broker.bootstrap_servers, [topic], expected=2))
            assert len({record.event_id for record in records}) == 2
    finally:
        broker.stop()


def test_wal_mode_reports_the_slot_on_metrics(
    settings: Settings, topic: str, tmp_path: Path
) -> None:
    with running_relay(settings, tmp_path, "--mode", "wal") as relay:
        wait_until("/readyz 200", lambda: relay.get("/readyz") == (200, "ready\n"))
        assert sample(relay.port, "outbox_relay_leader") == 1
        publish(settings.database_url, topic, 30)
        published = ("outbox_relay_events_published_total", {"topic": topic})
        wait_until("30 events published", lambda: sample(relay.port, *published) == 30)
        # The slot holds WAL since its restart point: the relay reports it (every 5 s).
        wait_until(
            "WAL retained by the slot on /metrics",
            lambda: sample(relay.port, "outbox_relay_wal_retained_bytes") > 0,
        )
