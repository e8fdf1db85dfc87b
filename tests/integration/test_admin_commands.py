"""The operator commands against a real PostgreSQL outbox (no relay running).

Rows are put in the states a relay would leave them in (pending, sent, parked,
skipped) with SQL, then each command is run as the user runs it.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from relay import admin
from relay.admin import Selection
from relay.cli import main
from relay.config import Settings
from relay.events import EventState
from tests.support import run_cli


def cli(*args: str) -> Result:
    """Run ``outbox-relay ARGS`` in-process, settings from flags only."""
    return CliRunner().invoke(main, list(args), env={"RELAY_CONFIG": None})


def add_events(
    database_url: str,
    count: int,
    *,
    topic: str,
    keys: int = 1,
    key_prefix: str = "k",
    state: str = "pending",
    age_s: float = 0.0,
    sent_age_s: float | None = None,
) -> list[int]:
    """Insert `count` events in `state`, created `age_s` ago; return their ids in order."""
    sent_at = "now() - make_interval(secs => %(sent_age)s)" if sent_age_s is not None else "NULL"
    parked_at = "now()" if state == "parked" else "NULL"
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            f"""
            INSERT INTO public.outbox
                (topic, key, payload, headers, created_at, state, sent_at, parked_at,
                 attempts, last_error)
            SELECT %(topic)s, %(prefix)s || (i %% %(keys)s), jsonb_build_object('n', i),
                   jsonb_build_object('source', 'test'),
                   now() - make_interval(secs => %(age)s), %(state)s, {sent_at}, {parked_at},
                   CASE WHEN %(state)s = 'parked' THEN 5 ELSE 0 END,
                   CASE WHEN %(state)s = 'parked' THEN 'MessageSizeTooLarge' END
            FROM generate_series(1, %(count)s) AS i
            ORDER BY i
            RETURNING id
            """,
            {
                "topic": topic,
                "prefix": key_prefix,
                "keys": keys,
                "age": age_s,
                "state": state,
                "sent_age": sent_age_s,
                "count": count,
            },
        ).fetchall()
    return sorted(row[0] for row in rows)


def rows_by_id(database_url: str) -> dict[int, dict[str, Any]]:
    with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
        rows = conn.execute("SELECT * FROM public.outbox ORDER BY id").fetchall()
    return {row["id"]: row for row in rows}


# --- status ---------------------------------------------------------------------------


def test_status_counts_per_topic_and_exit_codes_follow_thresholds(database_url: str) -> None:
    add_events(database_url, 3, topic="orders", age_s=120)
    add_events(database_url, 2, topic="orders", state="parked", age_s=300)
    add_events(database_url, 4, topic="orders", state="sent", age_s=30, sent_age_s=20)
    add_events(database_url, 5, topic="payments", state="sent", age_s=7200, sent_age_s=1800)
    add_events(database_url, 6, topic="payments", state="sent", age_s=9000, sent_age_s=8000)

    result = cli("status", "--database-url", database_url, "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert (status["pending"], status["parked"]) == (3, 2)
    assert 119 < status["oldest_pending_age_s"] < 600
    assert (status["sent_last_minute"], status["sent_last_hour"]) == (4, 9)
    by_topic = {t["topic"]: t for t in status["topics"]}
    assert by_topic["orders"]["pending"] == 3
    assert by_topic["orders"]["parked"] == 2
    assert (by_topic["payments"]["sent_last_minute"], by_topic["payments"]["sent_last_hour"]) == (
        0,
        5,
    )
    assert status["healthy"] is True

    assert cli("status", "--database-url", database_url, "--max-lag", "30s").exit_code == 1
    assert cli("status", "--database-url", database_url, "--max-lag", "1h").exit_code == 0
    parked = cli("status", "--database-url", database_url, "--max-parked", "0")
    assert parked.exit_code == 1
    assert "UNHEALTHY: 2 parked events (max 0)" in parked.stdout
    assert cli("status", "--database-url", database_url, "--max-parked", "2").exit_code == 0
    assert cli("status", "--database-url", database_url, "--max-pending", "2").exit_code == 1

    table = cli("status", "--database-url", database_url)
    assert table.exit_code == 0
    assert "orders" in table.stdout
    assert "payments" in table.stdout
    assert "healthy" in table.stdout


def test_status_on_an_empty_outbox_is_healthy(database_url: str) -> None:
    result = cli("status", "--database-url", database_url, "--max-lag", "1s", "--max-parked", "0")
    assert result.exit_code == 0, result.output
    assert "pending 0" in result.stdout


def test_status_counts_a_drained_backlog_of_old_events_sent_just_now(database_url: str) -> None:
    # Created three hours ago, sent in the last minute (the relay was down): the walk
    # must reach them although they are far from the newest rows.
    add_events(database_url, 50, topic="orders", state="sent", age_s=3 * 3600, sent_age_s=10)
    add_events(database_url, 20, topic="orders", age_s=3 * 3600)
    add_events(database_url, 10, topic="orders", age_s=5)
    status = json.loads(cli("status", "--database-url", database_url, "--json").stdout)
    assert (status["sent_last_minute"], status["pending"]) == (50, 30)


def test_status_counts_sent_events_across_an_id_gap(database_url: str) -> None:
    # A sequence set forward (a restore, a bulk insert rolled back) leaves slices of the
    # walk with no rows at all: the walk must jump the gap, not stop at it.
    add_events(database_url, 5, topic="orders", state="sent", age_s=30, sent_age_s=20)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('public.outbox', 'id'), 1000000 + "
            "(SELECT max(id) FROM public.outbox))"
        )
    add_events(database_url, 3, topic="orders", state="sent", age_s=10, sent_age_s=5)
    add_events(database_url, 2, topic="orders", age_s=1)
    status = json.loads(cli("status", "--database-url", database_url, "--json").stdout)
    assert (status["sent_last_minute"], status["sent_last_hour"]) == (8, 8)
    assert (status["pending"], status["sent_counts_complete"]) == (2, True)


def test_status_in_wal_mode_reports_the_slot(database_url: str) -> None:
    missing = cli("status", "--database-url", database_url, "--mode", "wal", "--json")
    assert missing.exit_code == 1
    missing_slot = json.loads(missing.stdout)["slot"]
    assert (missing_slot["slot_name"], missing_slot["exists"]) == ("outbox_relay", False)

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('admin_slot', 'pgoutput')")
    result = cli(
        "status", "--database-url", database_url, "--mode", "wal", "--slot-name", "admin_slot",
        "--json",
    )  # fmt: skip
    # Nobody streams from it: unhealthy, but every figure is there.
    assert result.exit_code == 1
    status = json.loads(result.stdout)
    slot = status["slot"]
    assert slot["exists"] is True
    assert slot["active"] is False
    assert slot["wal_status"] in {"reserved", "extended"}
    assert slot["retained_bytes"] >= 0
    assert "/" in slot["confirmed_flush_lsn"]
    assert slot["unconfirmed_bytes"] >= 0
    assert slot["max_slot_wal_keep_size"] == 1024**3
    assert any("inactive" in problem for problem in status["problems"])
    # The same slot figures, under the same names, as `outbox-relay slot status`.
    shown = cli(
        "slot", "status", "--database-url", database_url, "--slot-name", "admin_slot", "--json"
    )
    alone = json.loads(shown.stdout)
    assert set(alone) | {"exists", "max_slot_wal_keep_size"} == set(slot)
    assert alone["confirmed_flush_lsn"] == slot["confirmed_flush_lsn"]


def test_status_with_rows_never_marked_does_not_pretend_to_know_what_is_pending(
    database_url: str,
) -> None:
    add_events(database_url, 3, topic="orders", age_s=600)
    args = (
        "status", "--database-url", database_url,
        "--mode", "wal", "--on-sent", "none", "--poison", "skip",
    )  # fmt: skip
    result = cli(*args, "--json")
    status = json.loads(result.stdout)
    assert (status["pending"], status["oldest_pending_age_s"], status["sent_last_hour"]) == (
        None,
        None,
        None,
    )
    refused = cli(*args, "--max-lag", "30s")
    assert refused.exit_code == 2
    assert "--max-lag and --max-pending need --on-sent mark or delete" in refused.stderr


def test_status_reports_bad_input_and_a_missing_database_in_one_line(database_url: str) -> None:
    bad = cli("status", "--database-url", database_url, "--max-lag", "30x")
    assert bad.exit_code == 2
    assert bad.stderr.strip() == (
        "outbox-relay: error: invalid --max-lag: malformed duration '30x'; "
        "use e.g. 500ms, 30s, 15m, 2h, 7d"
    )
    unreachable = cli("status", "--database-url", "postgresql://nobody@127.0.0.1:1/x")
    assert unreachable.exit_code == 1
    assert unreachable.stderr.startswith("outbox-relay: error: cannot connect to the database")
    assert len(unreachable.stderr.strip().splitlines()) == 1


def test_commands_on_a_database_without_the_outbox_say_to_migrate(empty_database_url: str) -> None:
    result = cli("status", "--database-url", empty_database_url)
    assert result.exit_code == 1
    assert "run `outbox-relay migrate`" in result.stderr


# --- inspect and show -----------------------------------------------------------------


def test_inspect_filters_and_pages_by_keyset(database_url: str) -> None:
    ids = add_events(database_url, 25, topic="orders", keys=5, state="sent", sent_age_s=1)
    add_events(database_url, 3, topic="payments", state="parked")
    args = ("inspect", "--database-url", database_url, "--topic", "orders", "--key", "k1")
    first = cli(*args, "--limit", "3", "--jsonl")
    assert first.exit_code == 0, first.output
    page = [json.loads(line) for line in first.stdout.splitlines()]
    assert [row["key"] for row in page] == ["k1"] * 3
    assert [row["payload"]["n"] for row in page] == [1, 6, 11]
    assert first.stderr.strip() == f"next page: --after-id {page[-1]['id']}"

    second = cli(*args, "--limit", "3", "--jsonl", "--after-id", str(page[-1]["id"]))
    assert [json.loads(line)["payload"]["n"] for line in second.stdout.splitlines()] == [16, 21]
    assert "next page" not in second.stderr

    newest = json.loads(cli(*args, "--newest-first", "--limit", "2", "--json").stdout)
    assert [row["payload"]["n"] for row in newest] == [21, 16]

    parked = json.loads(
        cli("inspect", "--database-url", database_url, "--state", "parked", "--json").stdout
    )
    assert [row["topic"] for row in parked] == ["payments"] * 3
    assert parked[0]["last_error"] == "MessageSizeTooLarge"

    by_range = json.loads(
        cli(
            "inspect", "--database-url", database_url, "--after-id", str(ids[9]),
            "--before-id", str(ids[12]), "--json",
        ).stdout
    )  # fmt: skip
    assert [row["id"] for row in by_range] == ids[10:12]

    table = cli("inspect", "--database-url", database_url, "--state", "parked")
    assert table.stdout.splitlines()[0].split() == [
        "id", "event_id", "topic", "key", "state", "created_at", "att", "note", "payload",
    ]  # fmt: skip
    assert len(table.stdout.splitlines()) == 4


def test_inspect_time_range(database_url: str) -> None:
    add_events(database_url, 5, topic="old", state="sent", age_s=3 * 3600, sent_age_s=3 * 3600)
    add_events(database_url, 4, topic="middle", state="sent", age_s=3600 + 300, sent_age_s=10)
    add_events(database_url, 3, topic="new", age_s=60)

    def topics(*extra: str) -> list[str]:
        result = cli("inspect", "--database-url", database_url, "--json", *extra)
        assert result.exit_code == 0, result.output
        return [row["topic"] for row in json.loads(result.stdout)]

    assert topics("--since", "2h") == ["middle"] * 4 + ["new"] * 3
    assert topics("--since", "2h", "--until", "30m") == ["middle"] * 4
    assert topics("--until", "2h") == ["old"] * 5
    assert topics("--since", "2099-01-01T00:00:00") == []
    bad = cli("inspect", "--database-url", database_url, "--since", "last tuesday")
    assert bad.exit_code == 2
    assert bad.stderr.startswith("outbox-relay: error: invalid --since: 'last tuesday'")


def test_inspect_plans_use_the_primary_key_or_partial_indexes(database_url: str) -> None:
    # Enough rows that a sequential scan would be the planner's choice without the indexes.
    add_events(database_url, 200_000, topic="orders", keys=1000, state="sent", sent_age_s=60)
    add_events(database_url, 50, topic="orders", keys=10, state="parked")
    add_events(database_url, 50, topic="orders", keys=10)
    with psycopg.connect(database_url, autocommit=True) as plain:
        plain.execute("ANALYZE public.outbox")
    settings = Settings(database_url=database_url)
    with admin.connect(settings) as conn:

        def plan(selection: Selection) -> str:
            return admin.explain_list(conn, settings, selection, 50)

        assert "outbox_pending" in plan(Selection(state=EventState.PENDING))
        assert "outbox_parked" in plan(Selection(state=EventState.PARKED))
        assert "outbox_event_id_key" in plan(Selection(event_ids=(str(uuid.uuid4()),)))
        for selection in (
            Selection(),
            Selection(after_id=150_000),
            Selection(topics=("orders",), keys=("k7",), after_id=10),
            Selection(state=EventState.SENT, since=admin.parse_time_point("5m", "--since")),
        ):
            text = plan(selection)
            assert "outbox_pkey" in text, text
            assert "Seq Scan" not in text, text
            assert "Sort" not in text, text


def test_show_prints_the_row_with_a_pretty_payload(database_url: str) -> None:
    add_events(database_url, 1, topic="orders", state="parked")
    row = next(iter(rows_by_id(database_url).values()))
    result = cli("show", "--database-url", database_url, str(row["event_id"]))
    assert result.exit_code == 0, result.output
    assert f"event_id        {row['event_id']}" in result.stdout
    assert "last_error      MessageSizeTooLarge" in result.stdout
    assert 'payload:\n  {\n    "n": 1\n  }' in result.stdout
    by_id = json.loads(cli("show", "--database-url", database_url, str(row["id"]), "--json").stdout)
    assert by_id["event_id"] == str(row["event_id"])
    assert by_id["headers"] == {"source": "test"}


def test_show_unknown_or_malformed_event_id_is_one_line(database_url: str) -> None:
    unknown = run_cli("show", "--database-url", database_url, str(uuid.UUID(int=7)))
    assert unknown.returncode == 3
    assert unknown.stderr == (
        "outbox-relay: error: no event with event id "
        "00000000-0000-0000-0000-000000000007 in public.outbox\n"
    )
    malformed = run_cli("show", "--database-url", database_url, "not-a-uuid")
    assert malformed.returncode == 2
    assert malformed.stderr.startswith("outbox-relay: error: malformed event id 'not-a-uuid'")
    assert len(malformed.stderr.splitlines()) == 1


# --- retry and skip -------------------------------------------------------------------


def test_retry_releases_the_selected_parked_events_only(database_url: str) -> None:
    a = add_events(database_url, 3, topic="orders", key_prefix="a", state="parked")
    b = add_events(database_url, 2, topic="orders", key_prefix="b", state="parked")
    result = cli("retry", "--database-url", database_url, "--key", "a0")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("released 3 parked events")
    rows = rows_by_id(database_url)
    for row_id in a:
        assert (rows[row_id]["state"], rows[row_id]["attempts"]) == ("pending", 0)
        assert rows[row_id]["parked_at"] is None
    assert {rows[row_id]["state"] for row_id in b} == {"parked"}

    again = cli("retry", "--database-url", database_url, "--key", "a0")
    assert again.exit_code == 3
    assert again.stderr.strip() == "outbox-relay: error: no parked event matches key a0"


def test_retry_needs_a_filter_or_all_and_has_a_dry_run(database_url: str) -> None:
    add_events(database_url, 4, topic="orders", state="parked")
    bare = cli("retry", "--database-url", database_url)
    assert bare.exit_code == 2
    assert "or --all" in bare.stderr
    dry = cli("retry", "--database-url", database_url, "--all", "--dry-run", "--json")
    assert json.loads(dry.stdout) == {"dry_run": True, "events": 4, "by_topic": {"orders": 4}}
    assert {row["state"] for row in rows_by_id(database_url).values()} == {"parked"}
    everything = cli("retry", "--database-url", database_url, "--all", "--json")
    assert json.loads(everything.stdout) == {"released": 4}


def test_retry_works_in_small_batches(database_url: str) -> None:
    add_events(database_url, 23, topic="orders", keys=4, state="parked")
    settings = Settings(database_url=database_url)
    with admin.connect(settings) as conn:
        assert admin.retry(conn, settings, Selection(topics=("orders",)), batch_size=5) == 23
    assert {row["state"] for row in rows_by_id(database_url).values()} == {"pending"}


def test_skip_keeps_the_reason_and_touches_only_parked_events(database_url: str) -> None:
    parked = add_events(database_url, 2, topic="orders", state="parked")
    pending = add_events(database_url, 2, topic="orders")
    event_id = str(rows_by_id(database_url)[parked[0]]["event_id"])
    result = cli(
        "skip",
        "--database-url",
        database_url,
        "--event-id",
        event_id,
        "--reason",
        "INC-7 bad payload",
    )
    assert result.exit_code == 0, result.output
    rows = rows_by_id(database_url)
    assert (rows[parked[0]]["state"], rows[parked[0]]["skip_reason"]) == (
        "skipped",
        "INC-7 bad payload",
    )
    assert rows[parked[1]]["state"] == "parked"
    assert {rows[i]["state"] for i in pending} == {"pending"}
    no_reason = cli("skip", "--database-url", database_url, "--all")
    assert no_reason.exit_code == 2
    assert cli("skip", "--database-url", database_url, "--all", "--reason", " ").exit_code == 2


# --- purge ----------------------------------------------------------------------------


def test_purge_deletes_old_sent_and_skipped_events_only(database_url: str) -> None:
    old_sent = add_events(
        database_url, 120, topic="orders", state="sent", age_s=9 * 86400, sent_age_s=9 * 86400
    )
    old_skipped = add_events(database_url, 5, topic="orders", state="skipped", age_s=8 * 86400)
    old_pending = add_events(database_url, 7, topic="orders", age_s=10 * 86400)
    old_parked = add_events(database_url, 3, topic="orders", state="parked", age_s=10 * 86400)
    late_sent = add_events(
        database_url, 4, topic="orders", state="sent", age_s=8 * 86400, sent_age_s=60
    )
    recent = add_events(database_url, 10, topic="orders", state="sent", age_s=3600, sent_age_s=3000)

    dry = cli("purge", "--database-url", database_url, "--older-than", "7d", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["would_delete"] == 125
    assert len(rows_by_id(database_url)) == 149

    settings = Settings(database_url=database_url)
    batches: list[int] = []
    with admin.connect(settings) as conn:
        result = admin.purge(
            conn, settings, older_than=dt.timedelta(days=7), batch_size=50, on_batch=batches.append
        )
    assert result.events == 125
    assert batches == [50, 100, 125]
    left = set(rows_by_id(database_url))
    assert left == set(old_pending + old_parked + late_sent + recent)
    assert not left & set(old_sent + old_skipped)

    again = cli("purge", "--database-url", database_url, "--older-than", "7d")
    assert again.exit_code == 0
    assert again.stdout.startswith("deleted 0 sent/skipped events created before")


def test_purge_rejects_a_malformed_retention(database_url: str) -> None:
    result = run_cli("purge", "--database-url", database_url, "--older-than", "a week")
    assert result.returncode == 2
    assert result.stderr == (
        "outbox-relay: error: invalid --older-than: malformed duration 'a week'; "
        "use e.g. 500ms, 30s, 15m, 2h, 7d\n"
    )


# --- replay (the rows it writes; delivery is tested with a running relay) ---------------


def test_replay_inserts_ordered_copies_marked_as_replays(database_url: str) -> None:
    sent = add_events(database_url, 30, topic="orders", keys=3, state="sent", sent_age_s=5)
    add_events(database_url, 5, topic="orders", keys=3)  # pending: not replayed
    add_events(database_url, 5, topic="payments", state="sent", sent_age_s=5)

    dry = cli("replay", "--database-url", database_url, "--topic", "orders", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.startswith("would replay 30 events (dry run, nothing changed)")
    assert len(rows_by_id(database_url)) == 40

    result = cli(
        "replay", "--database-url", database_url, "--topic", "orders", "--key", "k1",
        "--to-topic", "orders.replay", "--chunk-size", "4", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    assert outcome["replayed"] == 10
    assert "10/10 replayed" in result.stderr  # the progress display
    rows = rows_by_id(database_url)
    copies = [row for row in rows.values() if row["id"] > max(rows) - 10]
    originals = [rows[i] for i in sent if rows[i]["key"] == "k1"]
    assert [c["headers"]["replay_of"] for c in copies] == [str(o["event_id"]) for o in originals]
    assert all(c["headers"]["replayed"] == "true" for c in copies)
    assert all(c["headers"]["source"] == "test" for c in copies)
    assert [c["payload"] for c in copies] == [o["payload"] for o in originals]
    assert {(c["topic"], c["state"], c["key"]) for c in copies} == {
        ("orders.replay", "pending", "k1")
    }
    assert not {c["event_id"] for c in copies} & {o["event_id"] for o in originals}
    assert (outcome["first_copy_id"], outcome["last_copy_id"]) == (
        copies[0]["id"],
        copies[-1]["id"],
    )


def test_replay_by_id_range_and_event_id(database_url: str) -> None:
    ids = add_events(database_url, 10, topic="orders", state="sent", sent_age_s=5)
    settings = Settings(database_url=database_url)
    with admin.connect(settings) as conn:
        plan = admin.plan_replay(
            conn, settings, Selection(after_id=ids[2] - 1, before_id=ids[5] + 1)
        )
        assert plan.total == 4
    event_id = str(rows_by_id(database_url)[ids[7]]["event_id"])
    result = cli("replay", "--database-url", database_url, "--event-id", event_id, "--json")
    assert json.loads(result.stdout)["replayed"] == 1
    ranged = cli(
        "replay", "--database-url", database_url, "--from-id", str(ids[2]), "--to-id", str(ids[5])
    )
    assert ranged.exit_code == 0, ranged.output
    copies = [row for row in rows_by_id(database_url).values() if "replay_of" in row["headers"]]
    assert [row["payload"]["n"] for row in copies] == [8, 3, 4, 5, 6]


def test_replay_refuses_empty_or_unbounded_selections_and_bad_topics(database_url: str) -> None:
    add_events(database_url, 3, topic="orders")  # pending, never sent
    nothing = cli("replay", "--database-url", database_url, "--topic", "orders")
    assert nothing.exit_code == 3
    assert nothing.stderr.strip() == "outbox-relay: error: no sent event matches topic orders"
    unbounded = cli("replay", "--database-url", database_url)
    assert unbounded.exit_code == 2
    bad_topic = cli("replay", "--database-url", database_url, "--all", "--to-topic", "a b")
    assert bad_topic.exit_code == 2
    assert "invalid topic 'a b'" in bad_topic.stderr


def test_replay_rate_limit_paces_small_batches(database_url: str) -> None:
    add_events(database_url, 100, topic="orders", state="sent", sent_age_s=5)
    settings = Settings(database_url=database_url)
    now = [0.0]
    pauses: list[float] = []
    progress: list[int] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        now[0] += seconds

    with admin.connect(settings) as conn:
        plan = admin.plan_replay(conn, settings, Selection(topics=("orders",)))
        result = admin.replay(
            conn, plan, settings, rate=40, on_progress=progress.append,
            clock=lambda: now[0], sleep=sleep,
        )  # fmt: skip
    assert result.copied == 100
    # Batches of at most one second's worth, each followed by the wait that keeps 40/s.
    assert progress == [40, 80, 100]
    assert now[0] == pytest.approx(100 / 40)
