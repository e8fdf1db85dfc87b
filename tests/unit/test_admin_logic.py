from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
from collections.abc import Callable

import pytest

from relay import admin
from relay.admin import (
    BadInputError,
    Selection,
    Status,
    Thresholds,
    TopicStatus,
    first_id_at_or_after,
    parse_event_id,
    parse_seconds,
    parse_time_point,
    pause_before_next,
    problems,
    walk_continues,
)
from tests.unit.slot_fixtures import SLOT

NOW = dt.datetime(2026, 1, 31, 12, 0, tzinfo=dt.UTC)


def test_time_point_accepts_durations_ago_and_iso_timestamps() -> None:
    assert parse_time_point("2h", "--since") == dt.timedelta(hours=2)
    assert parse_time_point("90", "--since") == dt.timedelta(seconds=90)
    assert parse_time_point("2026-01-31T10:00:00+01:00", "--since") == dt.datetime(
        2026, 1, 31, 9, 0, tzinfo=dt.UTC
    )
    # No offset: UTC, never the operator's local time zone.
    assert parse_time_point("2026-01-31 10:00", "--until") == dt.datetime(
        2026, 1, 31, 10, 0, tzinfo=dt.UTC
    )
    assert admin.resolve(dt.timedelta(hours=2), NOW) == NOW - dt.timedelta(hours=2)


@pytest.mark.parametrize("text", ["yesterday", "7x", "2026-13-01", ""])
def test_malformed_time_point_is_one_line_naming_the_flag(text: str) -> None:
    with pytest.raises(BadInputError, match=r"^invalid --since: ") as caught:
        parse_time_point(text, "--since")
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == 2


def test_malformed_duration_names_the_flag() -> None:
    assert parse_seconds("7d", "--older-than") == 7 * 86400
    with pytest.raises(BadInputError, match=r"invalid --older-than: malformed duration '7 days'"):
        parse_seconds("7 days", "--older-than")


def test_event_ids_are_canonical_uuids() -> None:
    assert (
        parse_event_id(" 1B4E28BA-2FA1-11D2-883F-0016D3CCA427 ")
        == "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    )
    with pytest.raises(BadInputError, match="malformed event id 'nope'"):
        parse_event_id("nope")


@pytest.mark.parametrize("topic", ["", ".", "..", "a b", "x" * 250, "orders/eu"])
def test_invalid_topic_names_are_refused(topic: str) -> None:
    with pytest.raises(BadInputError, match="invalid topic"):
        admin.check_topic_name(topic)


def test_valid_topic_name_passes() -> None:
    assert admin.check_topic_name("orders.replay-2_x") == "orders.replay-2_x"


def _probe_over(
    rows: list[tuple[int, dt.datetime]],
) -> tuple[Callable[[int], tuple[int, dt.datetime] | None], list[int]]:
    ids = [row_id for row_id, _ in rows]
    calls: list[int] = []

    def probe(row_id: int) -> tuple[int, dt.datetime] | None:
        calls.append(row_id)
        index = bisect.bisect_left(ids, row_id)
        return rows[index] if index < len(rows) else None

    return probe, calls


def test_first_id_at_or_after_finds_the_boundary_with_few_probes_despite_gaps() -> None:
    # ids with holes (purged rows), one row per second from NOW.
    rows = [(i, NOW + dt.timedelta(seconds=i)) for i in range(1, 1_000_001) if i % 7]
    probe, calls = _probe_over(rows)
    bound = first_id_at_or_after(NOW + dt.timedelta(seconds=500_000), probe, 1, 1_000_000)
    # Row 500_000 exists (not a multiple of 7): it is the boundary.
    assert bound == 500_000
    assert len(calls) <= 21
    # A boundary on a hole: any id in (last older row, first newer row] is correct.
    bound = first_id_at_or_after(NOW + dt.timedelta(seconds=700), probe, 1, 1_000_000)
    assert 699 < bound <= 701


def test_first_id_at_or_after_at_the_ends() -> None:
    rows = [(i, NOW + dt.timedelta(seconds=i)) for i in range(10, 20)]
    probe, _ = _probe_over(rows)
    assert first_id_at_or_after(NOW, probe, 10, 19) == 10
    assert first_id_at_or_after(NOW + dt.timedelta(days=1), probe, 10, 19) == 20
    empty, _ = _probe_over([])
    assert first_id_at_or_after(NOW, empty, 0, 0) == 0


def test_pause_keeps_the_rate() -> None:
    assert pause_before_next(1000, None, 0.1) == 0.0
    assert pause_before_next(1000, 500.0, 0.5) == pytest.approx(1.5)
    assert pause_before_next(1000, 500.0, 3.0) == 0.0


def test_sent_walk_goes_on_through_recent_sent_or_pending_slices_only() -> None:
    hour_ago = NOW - dt.timedelta(hours=1)
    old = NOW - dt.timedelta(hours=5)
    assert walk_continues(0, 0, NOW, hour_ago)  # created recently
    assert walk_continues(10, 0, old, hour_ago)  # old events sent just now: a drained backlog
    assert walk_continues(0, 3, old, hour_ago)  # an undrained backlog sits above drained rows
    assert not walk_continues(0, 0, old, hour_ago)
    assert not walk_continues(0, 0, None, hour_ago)  # a purged slice


def _status(
    pending: int = 0, oldest_pending_at: dt.datetime | None = None, parked: int = 0
) -> Status:
    topic = TopicStatus("orders", pending, oldest_pending_at, parked)
    return Status(now=NOW, topics=(topic,), sent_counts_complete=True)


def test_problems_follow_the_thresholds() -> None:
    lagging = _status(pending=5, oldest_pending_at=NOW - dt.timedelta(seconds=45), parked=1)
    assert problems(lagging, Thresholds()) == []
    assert problems(lagging, Thresholds(max_lag_s=60, max_parked=1, max_pending=5)) == []
    found = problems(lagging, Thresholds(max_lag_s=30, max_parked=0, max_pending=4))
    assert found == [
        "oldest pending event waited 45.0s (max 30s)",
        "1 parked events (max 0)",
        "5 pending events (max 4)",
    ]


def test_slot_problems_in_wal_mode() -> None:
    def with_slot(*, active: bool = True, wal_status: str = "reserved") -> Status:
        slot = dataclasses.replace(SLOT, active=active, wal_status=wal_status)
        return dataclasses.replace(_status(), slot_name=SLOT.slot_name, slot=slot)

    missing = dataclasses.replace(_status(), slot_name=SLOT.slot_name)
    lost = with_slot(wal_status="lost")
    idle = with_slot(active=False)
    fine = with_slot()
    assert problems(missing, Thresholds()) == ["replication slot outbox_relay does not exist"]
    assert "lost" in problems(lost, Thresholds())[0]
    assert "inactive" in problems(idle, Thresholds())[0]
    assert problems(fine, Thresholds()) == []


def test_status_totals_and_unknown_sent_counts() -> None:
    status = Status(
        now=NOW,
        topics=(
            TopicStatus("a", pending=2, oldest_pending_at=NOW - dt.timedelta(seconds=10)),
            TopicStatus("b", pending=1, oldest_pending_at=NOW - dt.timedelta(seconds=3), parked=4),
        ),
        sent_counts_complete=True,
    )
    assert (status.pending, status.parked, status.oldest_pending_age_s) == (3, 4, 10.0)
    unknown = Status(
        NOW,
        (TopicStatus("a", sent_last_hour=None, sent_last_minute=None),),
        sent_counts_complete=True,
    )
    assert unknown.sent_last_hour is None
    assert unknown.as_json()["sent_last_minute"] is None


def test_selection_describes_its_filters() -> None:
    assert Selection().describe() == "the whole outbox"
    assert not Selection().filtered
    selection = Selection(topics=("orders",), keys=("k1", "k2"), since=dt.timedelta(hours=2))
    assert selection.filtered
    assert selection.describe() == "topic orders and key k1, k2 and since 7200s ago"


def test_format_bytes() -> None:
    assert admin.format_bytes(None) == "-"
    assert admin.format_bytes(512) == "512 B"
    assert admin.format_bytes(1536) == "1.5 KiB"
    assert admin.format_bytes(3 * 1024**3) == "3.0 GiB"
    assert admin.format_bytes(5 * 1024**5) == "5120.0 TiB"
