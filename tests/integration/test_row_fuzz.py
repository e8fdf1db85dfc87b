"""Rows as a hostile or unlucky service writes them never crash the relay or the CLI."""

from __future__ import annotations

import psycopg

from relay.config import Settings
from tests.integration.poll_stack import async_wait_until, relay_in_process, states


async def test_rows_the_poll_fetch_parks_count_in_the_parked_metric(
    settings: Settings, topic: str
) -> None:
    url = settings.database_url
    with psycopg.connect(url) as conn:
        # A creation time Python has no datetime for (only the relay's own role, or the
        # owner, may set created_at): the fetch parks the row instead of failing.
        conn.execute(
            "INSERT INTO outbox (topic, key, payload, created_at) "
            "VALUES (%s, 'k', '{}', 'infinity')",
            (topic,),
        )
    async with relay_in_process(settings) as relay:
        await async_wait_until("parked", lambda: states(url).get("parked", 0) == 1, 30)
        parked = relay.metrics.registry.get_sample_value(
            "outbox_relay_events_parked_total", {"topic": topic}
        )
    assert parked == 1
