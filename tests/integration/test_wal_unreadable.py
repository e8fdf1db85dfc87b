"""WAL mode: rows the relay cannot turn into a record, met by a sweep of the table.

A creation time Python has no datetime for (``'infinity'``; only the relay's own role
or the table's owner may set created_at) failed every sweep: psycopg could not load it.
The sweep now reads it as text and parks the row, like the stream and poll mode do.
"""

from __future__ import annotations

import json

import psycopg
import pytest

from relay.config import Settings
from relay.metrics import Metrics
from relay.wal import _source as wal_source
from tests.integration.test_wal_relay import running_relay, states, wait_until, wal_settings
from tests.oracle import assert_delivered, outbox_rows
from tests.support import consume

pytestmark = pytest.mark.slow


def insert(url: str, topic: str, rows: list[tuple[str, str]]) -> None:
    """Insert `rows` (key, created_at) in order, one transaction each."""
    with psycopg.connect(url) as conn:
        for n, (key, created_at) in enumerate(rows):
            conn.execute(
                "INSERT INTO outbox (topic, key, payload, created_at) "
                "VALUES (%s, %s, %s, %s::timestamptz)",
                (topic, key, json.dumps({"n": n, "key": key}), created_at),
            )
            conn.commit()


def key_states(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT key, state FROM outbox ORDER BY id").fetchall()
    return [(key, state) for key, state in rows]


def parked_metric(metrics: Metrics, topic: str) -> float | None:
    return metrics.registry.get_sample_value("outbox_relay_events_parked_total", {"topic": topic})


async def test_an_infinite_creation_time_at_start_up_is_parked_by_the_slots_sweep(
    settings: Settings, topic: str
) -> None:
    """Written before the slot exists: the start-up sweep reads it (it used to fail the
    start, and every restart), parks it and holds its key; the other events flow."""
    url = settings.database_url
    insert(url, topic, [("a", "now"), ("a", "infinity"), ("a", "now"), ("b", "now")])
    metrics = Metrics()
    async with running_relay(wal_settings(settings), batch_size=10, metrics=metrics):
        await wait_until(lambda: states(url) == {"sent": 2, "parked": 1, "pending": 1})
        insert(url, topic, [("b", "now"), ("a", "now")])
        await wait_until(lambda: states(url) == {"sent": 3, "parked": 1, "pending": 2})
    assert key_states(url) == [
        ("a", "sent"),
        ("a", "parked"),
        ("a", "pending"),
        ("b", "sent"),
        ("b", "sent"),
        ("a", "pending"),
    ]
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT last_error FROM outbox WHERE state = 'parked'").fetchone()
    assert row is not None
    assert "'infinity'" in row[0]
    assert parked_metric(metrics, topic) == 1
    records = await consume(settings.bootstrap_servers, [topic], expected=3, idle_s=1)
    assert_delivered(records, outbox_rows(url, where="state = 'sent'"), max_duplicates=0)


async def test_an_infinite_creation_time_read_by_a_release_sweep_is_parked(
    settings: Settings, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream parks the first unreadable row of key a; the rows behind it wait
    pending, and one of them gets an infinite creation time (an update: only a sweep
    reads it). The operator fixes the first and releases it: the release sweep reads the
    second (it used to fail that sweep on every fetch, wedging the relay), parks it, and
    the rows of a before it go out in order; b flows throughout."""
    monkeypatch.setattr(wal_source, "PARKED_REFRESH_S", 0.3)
    url = settings.database_url
    metrics = Metrics()
    async with running_relay(wal_settings(settings), batch_size=10, metrics=metrics):
        insert(url, topic, [("a", "now"), ("b", "now")])
        await wait_until(lambda: states(url) == {"sent": 2})
        insert(url, topic, [("a", "infinity"), ("a", "now"), ("a", "now"), ("a", "now")])
        insert(url, topic, [("b", "now")])
        await wait_until(lambda: states(url) == {"sent": 3, "parked": 1, "pending": 3})
        assert parked_metric(metrics, topic) == 1  # parked by the stream
        with psycopg.connect(url) as conn:
            conn.execute(
                "UPDATE outbox SET created_at = 'infinity' WHERE id = (SELECT id FROM outbox "
                "WHERE key = 'a' AND state = 'pending' ORDER BY id OFFSET 1 LIMIT 1)"
            )
        with psycopg.connect(url) as conn:  # the operator fixes the row and retries it
            conn.execute(
                "UPDATE outbox SET created_at = now(), state = 'pending', attempts = 0, "
                "last_error = NULL, parked_at = NULL WHERE state = 'parked'"
            )
        await wait_until(lambda: states(url) == {"sent": 5, "parked": 1, "pending": 1})
        insert(url, topic, [("b", "now")])
        await wait_until(lambda: states(url) == {"sent": 6, "parked": 1, "pending": 1})
        assert parked_metric(metrics, topic) == 2  # parked by the release sweep
    assert key_states(url) == [
        ("a", "sent"),
        ("b", "sent"),
        ("a", "sent"),
        ("a", "sent"),
        ("a", "parked"),
        ("a", "pending"),
        ("b", "sent"),
        ("b", "sent"),
    ]
    records = await consume(settings.bootstrap_servers, [topic], expected=6, idle_s=1)
    assert_delivered(records, outbox_rows(url, where="state = 'sent'"), max_duplicates=0)


async def test_the_row_before_an_unreadable_one_in_the_same_transaction_goes_out(
    settings: Settings, topic: str
) -> None:
    """A good row of key a and an unreadable one of a in one transaction (one stream
    read): only the rows after the parked one wait; the one before it used to be held
    with them until a release."""
    url = settings.database_url
    async with running_relay(wal_settings(settings), batch_size=10):
        with psycopg.connect(url) as conn:
            for n, created_at in enumerate(["now", "infinity", "now"]):
                conn.execute(
                    "INSERT INTO outbox (topic, key, payload, created_at) "
                    "VALUES (%s, 'a', %s, %s::timestamptz)",
                    (topic, json.dumps({"n": n}), created_at),
                )
        insert(url, topic, [("b", "now")])
        await wait_until(lambda: states(url) == {"sent": 2, "parked": 1, "pending": 1})
    assert key_states(url) == [("a", "sent"), ("a", "parked"), ("a", "pending"), ("b", "sent")]
    records = await consume(settings.bootstrap_servers, [topic], expected=2, idle_s=1)
    assert_delivered(records, outbox_rows(url, where="state = 'sent'"), max_duplicates=0)
