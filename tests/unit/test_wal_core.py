"""The pure core of WAL mode against small reference models (Hypothesis state machines)."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from relay.events import OutboxEvent
from relay.wal import AckTracker, HandOver, Snapshot, parked_copy
from relay.wal._core import ReleaseMerge, Unmarked, note_parked, unseen_rows, waits_behind

XID_SPAN = 1 << 32


# --- AckTracker: what the slot may confirm ------------------------------------------------


class ConfirmMachine(RuleBasedStateMachine):
    """Transactions in commit order, their events settled in any order.

    The model: a list of transactions with their unsettled events. The confirmable
    position is the end of the longest settled prefix; it is never past the commit of
    an unsettled event, and the tracker keeps no entry beyond what is still open.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tracker = AckTracker(confirmed=10)
        self.lsn = 100
        #: [commit_lsn, end_lsn, unsettled events, events at commit]
        self.model: list[list[int]] = []
        self.confirmed_seen = 10

    @rule(count=st.integers(0, 3))
    def commit(self, count: int) -> None:
        commit_lsn, end_lsn = self.lsn, self.lsn + 8
        self.lsn += 16
        self.tracker.add(commit_lsn, end_lsn, count, commit_time_us=commit_lsn, xid=commit_lsn)
        self.model.append([commit_lsn, end_lsn, count, count])

    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        open_ = [entry for entry in self.model if entry[2]]
        if not open_:
            return
        entry = data.draw(st.sampled_from(open_))
        entry[2] -= 1
        self.tracker.done(entry[0])
        assert self.tracker.xid_of(entry[0]) == (entry[0] if entry[2] else None)

    @rule()
    def settle_unknown(self) -> None:
        # A swept row (lsn 0) or a stale copy: counts for nothing.
        self.tracker.done(0)
        self.tracker.done(self.lsn + 1)

    @rule()
    def server_idle(self) -> None:
        self.tracker.idle_position(self.lsn)
        if all(entry[2] == 0 for entry in self.model):
            self.model.append([self.lsn, self.lsn, 0, 0])
            self.lsn += 16

    def expected(self) -> int:
        confirmed = 10
        for _commit, end, left, _count in self.model:
            if left:
                break
            confirmed = end
        return confirmed

    @invariant()
    def confirms_the_settled_prefix(self) -> None:
        confirmed = self.tracker.confirmable()
        assert confirmed == self.expected()
        assert confirmed >= self.confirmed_seen  # never goes back
        self.confirmed_seen = confirmed

    @invariant()
    def never_past_an_unsettled_event(self) -> None:
        confirmed = self.tracker.confirmable()
        for commit_lsn, _end, left, _count in self.model:
            if left:
                assert confirmed < commit_lsn

    @invariant()
    def counts_and_bounded_state(self) -> None:
        unsettled = sum(entry[2] for entry in self.model)
        assert self.tracker.pending_events == unsettled
        assert self.tracker.idle == (unsettled == 0)
        # Entries only for transactions with events, from the first open one on:
        # a zero-event transaction never gets one.
        self.tracker.confirmable()
        first_open = next((i for i, e in enumerate(self.model) if e[2]), len(self.model))
        assert self.tracker.open_transactions == sum(
            1 for entry in self.model[first_open:] if entry[3]
        )

    def teardown(self) -> None:
        for entry in self.model:
            while entry[2]:
                entry[2] -= 1
                self.tracker.done(entry[0])
        assert self.tracker.confirmable() == (self.model[-1][1] if self.model else 10)
        assert self.tracker.open_transactions == 0


TestConfirm = ConfirmMachine.TestCase
TestConfirm.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# --- The hand-over: table sweep, then stream ----------------------------------------------


@dataclasses.dataclass
class Txn:
    full_xid: int
    rows: list[tuple[int, str]]
    commit_lsn: int | None = None


class HandOverMachine(RuleBasedStateMachine):
    """Writers commit rows while a sweep reads the table once, then the stream replays all.

    The model is the truth of the table: every committed row once, and per key in commit
    order. The relay's side: the sweep returns the rows its snapshot sees (pending, in id
    order); the stream then delivers every committed transaction in commit order, minus
    the rows `HandOver` says the sweep covered. Xids start near the 32-bit wraparound,
    as pgoutput's Begin carries only the low 32 bits.
    """

    open_txns = Bundle("open_txns")

    def __init__(self) -> None:
        super().__init__()
        self.next_xid = 0
        self.next_id = 1
        self.lsn = 1000
        self.txns: list[Txn] = []
        self.keys_in_use: set[str] = set()
        self.handover: HandOver | None = None
        self.swept: list[int] = []
        self.sent_before: set[int] = set()

    @initialize(start=st.sampled_from([3, 1000, XID_SPAN - 2, 5 * XID_SPAN - 1]))
    def start(self, start: int) -> None:
        self.next_xid = start

    @rule(target=open_txns, keys=st.lists(st.sampled_from("abcde"), min_size=0, max_size=3))
    def begin(self, keys: list[str]) -> Txn:
        # Writers serialize per key (a key is written by one open transaction at a time),
        # so the outbox order of a key is its commit order.
        keys = [key for key in keys if key not in self.keys_in_use]
        self.keys_in_use.update(keys)
        rows = []
        for key in keys:
            rows.append((self.next_id, key))
            self.next_id += 1
        txn = Txn(self.next_xid, rows)
        self.next_xid += 1
        self.txns.append(txn)
        return txn

    @rule(txn=consumes(open_txns))
    def commit(self, txn: Txn) -> None:
        txn.commit_lsn = self.lsn
        self.lsn += 10
        self.keys_in_use.difference_update(key for _id, key in txn.rows)

    @precondition(lambda self: self.handover is None)
    @rule(settle=st.booleans())
    def sweep(self, *, settle: bool) -> None:
        in_progress = frozenset(t.full_xid for t in self.txns if t.commit_lsn is None)
        xmax = self.next_xid
        xmin = min(in_progress, default=xmax)
        snapshot = Snapshot.parse(f"{xmin}:{xmax}:{','.join(map(str, sorted(in_progress)))}")
        visible = [t for t in self.txns if t.commit_lsn is not None]
        rows = sorted(row for t in visible for row in t.rows)
        if settle:
            # A previous session sent and marked the older half: not pending any more.
            self.sent_before = {id_ for id_, _key in rows[: len(rows) // 2]}
        self.swept = [id_ for id_, _key in rows if id_ not in self.sent_before]
        self.handover = HandOver(snapshot, horizon=self.lsn)
        self.lsn += 10

    def teardown(self) -> None:
        if self.handover is None:
            return
        for txn in self.txns:
            if txn.commit_lsn is None:
                txn.commit_lsn = self.lsn
                self.lsn += 10
        streamed: list[int] = []
        for txn in sorted(self.txns, key=lambda t: t.commit_lsn or 0):
            assert txn.commit_lsn is not None
            covered = self.handover.swept(txn.commit_lsn, txn.full_xid % XID_SPAN)
            if not covered:
                streamed.extend(id_ for id_, _key in txn.rows)
        delivered = self.swept + streamed
        every = {id_: key for txn in self.txns for id_, key in txn.rows}
        # Nothing missing, nothing twice, nothing already sent again.
        assert sorted(delivered) == sorted(set(every) - self.sent_before)
        # Per key, commit order (which is id order for a key here).
        for key in set(every.values()):
            of_key = [id_ for id_ in delivered if every[id_] == key]
            assert of_key == sorted(of_key)


TestHandOver = HandOverMachine.TestCase
TestHandOver.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)


# --- Marking: the rows a mark missed ------------------------------------------------------


@dataclasses.dataclass
class Streamed:
    xid: int
    commit_lsn: int
    rows: list[int]
    visible: bool = False


def row_event(id_: int, commit_lsn: int) -> OutboxEvent:
    return OutboxEvent(
        id=id_, event_id=f"e{id_}", topic="t", key=None, value=None, headers=(), lsn=commit_lsn
    )


class MarkMachine(RuleBasedStateMachine):
    """Commits are streamed before they are visible; marks run at any moment in between.

    The model is the table (each row pending, sent or skipped) and which commits other
    sessions see. A mark changes the visible pending rows it is given, in one snapshot;
    `unseen_rows` says which misses to retry (`Unmarked`), and only the others count as
    settled in the `AckTracker`. A retry of the unmarked rows awaits the database: other
    acknowledgements may run between its statement and its result. The slot must never
    confirm past a row still pending, a pending row is always in flight or waiting to be
    marked again (never forgotten), and nothing already marked waits (bounded).
    """

    def __init__(self) -> None:
        super().__init__()
        self.tracker = AckTracker(confirmed=10)
        self.next_xid = XID_SPAN - 3  # across the 32-bit wraparound
        self.lsn = 100
        self.txns: list[Streamed] = []
        self.state: dict[int, str] = {}
        self.txn_of: dict[int, Streamed] = {}
        self.in_flight: list[OutboxEvent] = []
        self.unmarked = Unmarked()
        #: A retry whose statement ran and whose result is not applied yet.
        self.retrying: tuple[list[OutboxEvent], set[int]] | None = None
        self.next_id = 1

    @rule(count=st.integers(1, 3))
    def commit(self, count: int) -> None:
        rows = list(range(self.next_id, self.next_id + count))
        self.next_id += count
        txn = Streamed(self.next_xid, self.lsn, rows)
        self.next_xid += 1
        self.lsn += 16
        self.txns.append(txn)
        for row in rows:
            self.state[row] = "pending"
            self.txn_of[row] = txn
        self.tracker.add(txn.commit_lsn, txn.commit_lsn + 8, count, xid=txn.xid % XID_SPAN)
        self.in_flight.extend(row_event(row, txn.commit_lsn) for row in rows)

    @rule(data=st.data())
    def becomes_visible(self, data: st.DataObject) -> None:
        hidden = [txn for txn in self.txns if not txn.visible]
        if hidden:
            data.draw(st.sampled_from(hidden)).visible = True

    @rule(data=st.data())
    def operator_skips(self, data: st.DataObject) -> None:
        visible = [r for r, s in self.state.items() if s == "pending" and self.txn_of[r].visible]
        if visible:
            self.state[data.draw(st.sampled_from(visible))] = "skipped"

    def snapshot(self) -> Snapshot:
        hidden = sorted(txn.xid for txn in self.txns if not txn.visible)
        xmin = hidden[0] if hidden else self.next_xid
        return Snapshot(xmin, self.next_xid, frozenset(hidden))

    def mark(self, events: list[OutboxEvent]) -> set[int]:
        """The mark statement: its changes and the rows it missed unseen, one snapshot."""
        snapshot = self.snapshot()
        marked = set()
        for event in events:
            if self.state[event.id] == "pending" and self.txn_of[event.id].visible:
                self.state[event.id] = "sent"
                marked.add(event.id)
        xids = {event.id: self.tracker.xid_of(event.lsn) for event in events}
        return unseen_rows(xids, marked, snapshot, xids.get)

    def count_done(self, events: list[OutboxEvent]) -> None:
        for event in events:
            self.tracker.done(event.lsn)

    @rule(count=st.integers(1, 4))
    def acknowledge(self, count: int) -> None:
        batch, self.in_flight = self.in_flight[:count], self.in_flight[count:]
        if batch:
            unseen = self.mark(batch)
            self.unmarked.add(event for event in batch if event.id in unseen)
            self.count_done([event for event in batch if event.id not in unseen])

    @precondition(lambda self: self.unmarked and self.retrying is None)
    @rule()
    def retry_runs_its_statement(self) -> None:
        tried = self.unmarked.to_retry()
        self.retrying = (tried, self.mark(tried))

    @precondition(lambda self: self.retrying is not None)
    @rule()
    def retry_gets_its_result(self) -> None:
        assert self.retrying is not None
        tried, missing = self.retrying
        self.retrying = None
        self.count_done(self.unmarked.settle(tried, missing))

    @invariant()
    def never_confirmed_past_a_pending_row(self) -> None:
        confirmed = self.tracker.confirmable()
        for id_, state in self.state.items():
            if state == "pending":
                assert confirmed < self.txn_of[id_].commit_lsn

    @invariant()
    def no_pending_row_forgotten_and_bounded(self) -> None:
        waiting = {event.id for event in self.in_flight + self.unmarked.to_retry()}
        pending = {id_ for id_, state in self.state.items() if state == "pending"}
        assert pending <= waiting
        if self.retrying is None:
            # What waits to be marked again is never a row already marked.
            assert all(self.state[event.id] != "sent" for event in self.unmarked.to_retry())
        assert self.tracker.pending_events == len(self.in_flight) + len(self.unmarked)

    def teardown(self) -> None:
        if self.retrying is not None:
            self.retry_gets_its_result()
        for txn in self.txns:
            txn.visible = True
        self.acknowledge(len(self.in_flight))
        if self.unmarked:
            self.retry_runs_its_statement()
            self.retry_gets_its_result()
        assert not self.unmarked
        assert "pending" not in self.state.values()
        assert self.tracker.confirmable() == (self.txns[-1].commit_lsn + 8 if self.txns else 10)


TestMark = MarkMachine.TestCase
TestMark.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# --- Snapshots and parking -------------------------------------------------------------------


def test_snapshot_text_is_parsed_as_postgresql_prints_it() -> None:
    snapshot = Snapshot.parse("10:20:12,15")
    assert snapshot.sees(9)
    assert not snapshot.sees(12)
    assert snapshot.sees(13)
    assert not snapshot.sees(20)
    assert Snapshot.parse("7:7:").in_progress == frozenset()
    with pytest.raises(ValueError, match="pg_snapshot"):
        Snapshot.parse("20:10:")


@given(
    xmax=st.integers(0, 10 * XID_SPAN),
    back=st.integers(0, 2**31 - 1),
)
def test_a_32_bit_xid_is_placed_in_the_right_epoch(xmax: int, back: int) -> None:
    full = xmax - back
    if full < 0:
        return
    snapshot = Snapshot(xmax, xmax, frozenset())
    assert snapshot.full_xid(full % XID_SPAN) == full
    assert snapshot.sees(full % XID_SPAN) == (full < xmax)


def test_the_hand_over_ends_past_its_horizon() -> None:
    handover = HandOver(Snapshot.parse("100:105:"), horizon=500)
    assert handover.swept(400, 99)
    assert not handover.swept(400, 105)  # not seen by the snapshot: the stream's
    assert not handover.swept(600, 99)
    assert handover.expired
    assert not handover.swept(400, 99)  # never again


def test_a_release_hand_over_covers_only_its_keys() -> None:
    handover = HandOver(Snapshot.parse("100:105:"), horizon=500, keys=frozenset({"k"}))
    assert handover.covers("k")
    assert not handover.covers("j")
    assert not handover.covers(None)
    assert HandOver().covers(None)


def released(
    queued: list[OutboxEvent], swept: list[OutboxEvent], keys: frozenset[str]
) -> list[OutboxEvent]:
    """The queue after a release sweep read `swept` (in id order, as its chunks do)."""
    merge, queue = ReleaseMerge.split(queued, keys)
    for row in sorted(swept, key=lambda event: event.id):
        queue.extend(merge.merge(row))
    queue.extend(merge.remaining())
    return queue


@given(
    queued=st.lists(st.tuples(st.sampled_from("abcd"), st.booleans()), max_size=12),
    swept=st.lists(st.sampled_from("ab"), max_size=8),
)
def test_a_release_keeps_every_keys_outbox_order(
    queued: list[tuple[str, bool]], swept: list[str]
) -> None:
    """Queued events (some table-less), then swept rows of released keys a and b.

    Ids grow in outbox order: the swept rows are either older than everything queued
    (released) or newer (not decoded yet), and never already queued.
    """
    events = []
    for n, (key, table_less) in enumerate(queued):
        events.append(row_event(0 if table_less else 100 + n, 1))
        events[-1] = dataclasses.replace(events[-1], key=key)
    rows = [
        dataclasses.replace(row_event(n if n % 2 else 500 + n, 0), key=key)
        for n, key in enumerate(swept, 1)
    ]
    keys = frozenset("ab")
    out = released(events, rows, keys)
    assert sorted(map(id, out)) == sorted(map(id, events + rows))  # nothing lost or doubled
    for key in "abcd":
        of_key = [event for event in out if event.key == key and event.id]
        if key in keys:
            assert [e.id for e in of_key] == sorted(e.id for e in of_key)
        else:  # other keys keep their order and their place behind
            assert of_key == [e for e in events if e.key == key and e.id]
    assert [e for e in out if not e.id] == [e for e in events if not e.id]


def test_content_over_the_limit_is_parked_truncated_with_size_and_digest() -> None:
    small = b"x" * 10
    assert parked_copy(small, 100) == (small, "")
    assert parked_copy(None, 100) == (None, "")
    big = bytes(range(256)) * 100
    copy, note = parked_copy(big, 2000)
    assert copy == big[:1024]
    assert str(len(big)) in note
    assert hashlib.sha256(big).hexdigest() in note
    copy, _note = parked_copy(big, 10)
    assert copy == big[:10]


@given(
    queued=st.lists(st.tuples(st.sampled_from("abcd"), st.booleans()), max_size=12),
    also_swept=st.lists(st.booleans(), max_size=12),
    swept=st.lists(st.sampled_from("ab"), max_size=8),
)
def test_a_release_keeps_the_queued_copy_of_a_row_the_sweep_also_read(
    queued: list[tuple[str, bool]], also_swept: list[bool], swept: list[str]
) -> None:
    """The stream queued rows of a released key before the sweep's snapshot existed,
    and the snapshot saw them pending: they are swept too. Each row goes once, as the
    queued copy (the stream's tracker counts it), and every key stays in id order."""
    events = [
        dataclasses.replace(row_event(0 if table_less else 100 + n, 1), key=key)
        for n, (key, table_less) in enumerate(queued)
    ]
    keys = frozenset("ab")
    doubled = [
        dataclasses.replace(event, lsn=0)
        for event, again in zip(events, also_swept, strict=False)
        if again and event.id and event.key in keys
    ]
    older = [dataclasses.replace(row_event(n, 0), key=key) for n, key in enumerate(swept, 1)]
    out = released(events, [*older, *doubled], keys)
    # Each row once, as its queued copy: no swept copy of a queued row goes out.
    assert sorted(map(id, out)) == sorted(map(id, events + older))
    row_ids = [e.id for e in out if e.id]
    assert len(row_ids) == len(set(row_ids))
    for key in keys:
        of_key = [e.id for e in out if e.key == key and e.id]
        assert of_key == sorted(of_key)


@given(
    parked=st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 30)), max_size=6),
    events=st.lists(st.tuples(st.sampled_from(["a", "b", "c", None]), st.integers(0, 30))),
)
def test_only_the_events_after_a_keys_parked_row_wait_behind_it(
    parked: list[tuple[str, int]], events: list[tuple[str | None, int]]
) -> None:
    """Rows parked in any order (0: a parked row whose id is not known); an event waits
    when a parked row of its key comes before it in outbox order, or it is table-less
    (id 0) and its key is parked. An earlier row of the key goes out."""
    first: dict[str, int] = {}
    for parked_key, parked_id in parked:
        note_parked(first, parked_key, parked_id)
    for key, row_id in events:
        model = any(
            key == parked_key and (not row_id or parked_id < row_id)
            for parked_key, parked_id in parked
        )
        assert waits_behind(key, row_id, first) == model
