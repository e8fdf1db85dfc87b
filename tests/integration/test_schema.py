from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from relay import sql as relay_sql
from relay.producer import Event, publish_many

SENT_ROWS = 10_000_000
PENDING_ROWS = 300

# What the poll relay asks for: the next batch of pending events after the last id seen.
FETCH = """
SELECT id, event_id, topic, key, payload, payload_bytes, headers, event_type,
       aggregate_type, created_at, attempts
FROM outbox
WHERE state = 'pending' AND id > {after}
ORDER BY id
LIMIT 2000
"""


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _assert_pending_index_range_scan(plan: dict[str, Any]) -> None:
    nodes = list(_nodes(plan))
    node_types = [node["Node Type"] for node in nodes]
    assert "Seq Scan" not in node_types, node_types
    assert "Sort" not in node_types, node_types  # the index gives id order
    scans = [node for node in nodes if node.get("Relation Name") == "outbox"]
    assert len(scans) == 1, node_types
    assert scans[0]["Node Type"] == "Index Scan", scans[0]
    assert scans[0]["Index Name"] == "outbox_pending"
    assert "id >" in scans[0]["Index Cond"]


@pytest.mark.slow
def test_the_pending_scan_stays_an_index_range_scan_beside_10_million_sent_rows(
    database_url: str, topic: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        # The real table, filled in one statement. Event ids ascend so that the unique
        # index is appended to, not written at random: the fill takes a minute, not ten.
        filled = conn.execute(
            "INSERT INTO outbox (event_id, topic, key, payload, state, sent_at)"
            " SELECT lpad(to_hex(i), 32, '0')::uuid, 'orders', (i %% 1000)::text,"
            "        '{\"n\": 1}', 'sent', now()"
            " FROM generate_series(1, %s) AS i",
            (SENT_ROWS,),
        )
        publish_many(conn, [Event(topic, {"n": n}, key=str(n % 7)) for n in range(PENDING_ROWS)])
        assert filled.rowcount == SENT_ROWS
        conn.execute("ANALYZE outbox")

        # The plan PostgreSQL picks for the values (a relay that just started: after 0) ...
        row = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + FETCH.format(after=0)
        ).fetchone()
        assert row is not None
        explained = row[0] if isinstance(row[0], list) else json.loads(row[0])
        plan = explained[0]["Plan"]
        _assert_pending_index_range_scan(plan)
        assert plan["Actual Rows"] == PENDING_ROWS
        # ... reads a handful of pages, not the 10 million rows.
        pages = plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]
        assert pages < 100, pages

        # ... and the generic plan of the prepared statement, whatever the parameter.
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute("PREPARE fetch_pending(bigint) AS " + FETCH.format(after="$1"))
        row = conn.execute("EXPLAIN (FORMAT JSON) EXECUTE fetch_pending(5000000)").fetchone()
        assert row is not None
        explained = row[0] if isinstance(row[0], list) else json.loads(row[0])
        _assert_pending_index_range_scan(explained[0]["Plan"])

        # The poll relay's own queries, as it renders them, without its session settings.
        conn.execute("RESET plan_cache_mode")
        names = relay_sql.identifiers("public", "outbox")
        for name in ("fetch_park", "fetch_skip"):
            query = relay_sql.query("poll", name, names)
            row = conn.execute(
                sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ") + query,
                {"after": 0, "limit": 2000, "in_flight": [1, 2, 3]},
            ).fetchone()
            assert row is not None
            explained = row[0] if isinstance(row[0], list) else json.loads(row[0])
            plan = explained[0]["Plan"]
            scans = {
                (node["Node Type"], node.get("Index Name"))
                for node in _nodes(plan)
                if node.get("Relation Name") == "outbox"
            }
            assert ("Seq Scan", None) not in scans, (name, scans)
            assert ("Index Scan", "outbox_pending") in scans, (name, scans)
            # fetch_park probes the parked index once per pending row: pages grow with the
            # batch, never with the sent rows (the table has over 100 000 pages).
            pages = plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]
            assert pages < 4 * PENDING_ROWS, (name, pages)
