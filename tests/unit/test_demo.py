"""The demo's bookkeeping: pacing, the tally of what arrived, and the verdict."""

from __future__ import annotations

import io

from relay import demo
from relay.progress import Progress


def test_due_paces_the_writer_at_the_rate() -> None:
    assert demo.due(rate=100, elapsed_s=0.0, written=0, total=1000) == 1
    assert demo.due(rate=100, elapsed_s=1.0, written=1, total=1000) == 100
    assert demo.due(rate=100, elapsed_s=1.0, written=101, total=1000) == 0
    assert demo.due(rate=100, elapsed_s=60.0, written=990, total=1000) == 10


def test_due_at_rate_zero_writes_as_fast_as_transactions_allow() -> None:
    assert demo.due(rate=0, elapsed_s=0.0, written=0, total=10) == 10
    assert demo.due(rate=0, elapsed_s=0.0, written=0, total=10**6) == (
        demo.MAX_EVENTS_PER_TRANSACTION
    )
    assert demo.due(rate=0, elapsed_s=0.0, written=10, total=10) == 0


def test_orders_of_a_customer_count_up() -> None:
    orders = [demo.Order(number, customers=3) for number in range(7)]
    assert [(o.customer, o.seq) for o in orders if o.customer == "customer-1"] == [
        ("customer-1", 0),
        ("customer-1", 1),
    ]


def test_tally_counts_distinct_events_and_duplicates() -> None:
    tally = demo.Tally()
    tally.record("a", "k1", 0, partition=0)
    tally.record("b", "k1", 1, partition=0)
    tally.record("a", "k1", 0, partition=0)  # redelivered
    assert (tally.relayed, tally.duplicates, tally.out_of_order) == (2, 1, 0)


def test_tally_notices_broken_per_key_order_and_split_keys() -> None:
    tally = demo.Tally()
    tally.record("a", "k1", 1, partition=0)
    tally.record("b", "k1", 0, partition=0)
    tally.record("c", "k2", 0, partition=1)
    tally.record("d", "k2", 1, partition=2)
    assert tally.out_of_order == 1
    assert tally.split_keys == 1


def test_summary_says_ok_only_when_every_event_arrived_in_order() -> None:
    tally = demo.Tally()
    tally.record("a", "k", 0, partition=0)
    tally.record("b", "k", 1, partition=0)
    ok = demo.summary_lines(tally, written=2, elapsed_s=1.0)
    assert ok[-1] == "OK: every event relayed"
    assert "per-key order held (1 keys)" in "\n".join(ok)
    missing = demo.summary_lines(tally, written=3, elapsed_s=1.0)
    assert missing[-1] == "FAILED: 1 of 3 events not relayed"
    tally.record("c", "k", 0, partition=0)
    assert "BROKEN" in "\n".join(demo.summary_lines(tally, written=3, elapsed_s=1.0))


def test_summary_reports_lost_trace_context() -> None:
    tally = demo.Tally()
    tally.record("a", "k", 0, partition=0, trace_intact=False)
    assert "1 events lost their traceparent" in "\n".join(demo.summary_lines(tally, 1, 1.0))


def test_progress_line_shows_written_relayed_lag_and_rate() -> None:
    line = demo.progress_line(written=900, total=1000, relayed=850, events_per_s=1234.5)
    assert line == "written 900/1000 | relayed 850 | lag 50 | 1,234 events/s"


def test_progress_prints_lines_when_not_on_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(stream, line_interval_s=0.0)
    progress.show("one")
    progress.say("done")
    assert stream.getvalue() == "one\ndone\n"
    assert demo.refresh_interval_s(progress) == demo.LOG_REFRESH_S
