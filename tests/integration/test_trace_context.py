"""W3C trace context written with an event reaches the Kafka record unchanged."""

from __future__ import annotations

import asyncio
from pathlib import Path

from relay.config import Settings
from tests.integration.test_http import publish, running_relay, sample, wait_until
from tests.support import consume

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


def test_traceparent_and_tracestate_reach_the_record_headers_unchanged(
    settings: Settings, topic: str, tmp_path: Path
) -> None:
    headers = {"traceparent": TRACEPARENT, "tracestate": TRACESTATE, "tenant": "acme"}
    with running_relay(settings, tmp_path) as relay:
        publish(settings.database_url, topic, 3, headers)
        published = ("outbox_relay_events_published_total", {"topic": topic})
        wait_until("3 events published", lambda: sample(relay.port, *published) == 3)
    records = asyncio.run(consume(settings.bootstrap_servers, [topic], expected=3))
    assert len(records) == 3
    for record in records:
        assert record.headers["traceparent"] == TRACEPARENT.encode()
        assert record.headers["tracestate"] == TRACESTATE.encode()
        assert record.headers["tenant"] == b"acme"
        assert "event_id" in record.headers
