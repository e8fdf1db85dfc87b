"""The pure core of WAL mode's hand-over: plain values in, plain values out.

No asyncio, no psycopg: `relay.wal._source` does the waiting and the I/O and asks
these objects what to do (psycopg's ``generators.py`` / ``waiting.py`` split).

* `Snapshot` answers "did the sweep's snapshot see this transaction?" from the text of
  ``pg_current_snapshot()`` and a 32-bit xid as pgoutput's Begin carries it. That is
  the whole hand-over rule between the table and the stream (`HandOver`): a streamed
  row whose transaction the sweep's snapshot saw is either swept (it was pending) or
  settled (it was not), so the stream drops it; every other row is the stream's. The
  rule needs no memory per swept row, and it holds for a fresh source after a
  PostgreSQL restart or a lost leadership session: the table says what was sent.
* `AckTracker` says which WAL position the slot may confirm. It keeps one entry per
  transaction that still has events to settle, never one per zero-event transaction.
* `unseen_rows` reads the result of a mark: which rows it missed because their
  transaction is not visible yet (to retry), as opposed to rows settled otherwise.
* `Unmarked` keeps the sent events whose mark found no visible row yet, until a mark
  finds it: only then do their transactions count as settled.
* `ReleaseMerge` merges a release sweep's rows, chunk by chunk, with the released
  keys' events still queued: per key in outbox order, each row once.
* `waits_behind` says whether an event waits behind its key's parked event: only the
  events after it in outbox order do.
* `parked_copy` shrinks content that cannot be parked as it is (over the outbox's
  payload limit) into a copy that can, with its size and digest.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Final

from relay.events import OutboxEvent

#: 2**32: pgoutput's xids are 32 bits, ``pg_snapshot`` values are 64 (epoch, xid).
_XID_SPAN: Final = 1 << 32
#: Bytes of the original content kept in a parked copy of content too large to park.
PARKED_COPY_BYTES: Final = 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """A ``pg_snapshot`` value: which transactions a snapshot sees."""

    xmin: int
    xmax: int
    in_progress: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        """``xmin:xmax:xip1,xip2`` as ``pg_current_snapshot()::text`` prints it.

        Raises:
            ValueError: `text` is not a snapshot.

        """
        xmin_text, xmax_text, xip_text = text.split(":")
        xmin, xmax = int(xmin_text), int(xmax_text)
        in_progress = frozenset(int(x) for x in xip_text.split(",") if x)
        if xmin > xmax or any(not xmin <= x < xmax for x in in_progress):
            raise ValueError(f"not a pg_snapshot: {text!r}")
        return cls(xmin, xmax, in_progress)

    def full_xid(self, xid: int) -> int:
        """The 64-bit xid of a 32-bit one from around this snapshot (its epoch)."""
        epoch_base = self.xmax - self.xmax % _XID_SPAN
        full = epoch_base + xid % _XID_SPAN
        if full > self.xmax and full >= _XID_SPAN:
            full -= _XID_SPAN  # from the previous epoch
        return full

    def sees(self, xid: int) -> bool:
        """Whether a *committed* transaction with 32-bit `xid` is visible in this snapshot."""
        full = self.full_xid(xid)
        return full < self.xmax and full not in self.in_progress


@dataclasses.dataclass(slots=True)
class HandOver:
    """Which streamed rows the sweep already covered.

    `snapshot` is the snapshot the sweep read the table in and `horizon` the WAL insert
    position read in it: a transaction committed after `horizon` committed after the
    snapshot was taken, so no snapshot check is needed (and none is made) past it.
    Table-less messages exist only in the WAL: they always come from the stream.
    """

    snapshot: Snapshot | None = None
    horizon: int = 0
    #: A release sweep reads only these keys' rows: only they are the sweep's.
    keys: frozenset[str] | None = None

    @property
    def expired(self) -> bool:
        """True once the stream passed the horizon (the check never applies again)."""
        return self.snapshot is None

    def covers(self, key: str | None) -> bool:
        """Whether a row with `key` was read by this sweep (if its transaction was seen)."""
        return self.keys is None or (key is not None and key in self.keys)

    def swept(self, commit_lsn: int, xid: int) -> bool:
        """True when the rows of this transaction are the sweep's, not the stream's."""
        snapshot = self.snapshot
        if snapshot is None:
            return False
        if commit_lsn > self.horizon:
            self.snapshot = None  # the stream is past the hand-over for good
            return False
        return snapshot.sees(xid)


class AckTracker:
    """Which WAL position the slot may confirm, given what is settled.

    Transactions enter in commit order with the number of their events; `done` counts
    events off (acknowledged by Kafka and settled in the table). `confirmable` is the
    end LSN of the last transaction such that it and every earlier one are settled.

    Only transactions with events to settle get an entry; a zero-event transaction
    (every transaction of the database on PostgreSQL 14 and older) only moves the end
    of the entry before it, or the confirmable position when nothing is open.
    """

    def __init__(self, confirmed: int = 0) -> None:
        # [commit_lsn, end LSN confirmable once settled, events left, commit µs, xid]
        self._open: collections.deque[list[int]] = collections.deque()
        self._by_commit: dict[int, list[int]] = {}
        self.confirmed = confirmed
        self._pending_events = 0

    def add(
        self, commit_lsn: int, end_lsn: int, events: int, commit_time_us: int = 0, xid: int = 0
    ) -> None:
        """Register a committed transaction with `events` events still to settle."""
        if not events:
            if self._open:
                tail = self._open[-1]
                tail[1] = max(tail[1], end_lsn)
            else:
                self.confirmed = max(self.confirmed, end_lsn)
            return
        entry = [commit_lsn, end_lsn, events, commit_time_us, xid]
        self._open.append(entry)
        self._by_commit[commit_lsn] = entry
        self._pending_events += events

    def done(self, commit_lsn: int, events: int = 1) -> None:
        """Count `events` of the transaction that committed at `commit_lsn` as settled."""
        entry = self._by_commit.get(commit_lsn)
        if entry is None:
            return  # swept rows (lsn 0) and transactions from before a reconnect
        settled = min(events, entry[2])
        entry[2] -= settled
        self._pending_events -= settled
        if entry[2] == 0:
            del self._by_commit[commit_lsn]

    def xid_of(self, commit_lsn: int) -> int | None:
        """The xid of an open transaction with events left, if it is one."""
        entry = self._by_commit.get(commit_lsn)
        return None if entry is None else entry[4]

    @property
    def idle(self) -> bool:
        """True when no registered transaction has events left to settle."""
        return self._pending_events == 0

    @property
    def pending_events(self) -> int:
        """Events registered and not yet settled."""
        return self._pending_events

    @property
    def open_transactions(self) -> int:
        """Entries kept: transactions with events, up to the last unsettled one."""
        return len(self._open)

    def confirmable(self) -> int:
        """Advance past every leading settled transaction; the position safe to confirm."""
        queue = self._open
        while queue and queue[0][2] == 0:
            end_lsn = queue.popleft()[1]
            self.confirmed = max(self.confirmed, end_lsn)
        return self.confirmed

    def oldest_commit_time_us(self) -> int | None:
        """Commit time of the oldest transaction not yet confirmable, if any."""
        for entry in self._open:
            if entry[2]:
                return entry[3]
        return None

    def idle_position(self, server_position: int) -> None:
        """With nothing open, the server's position is safe too (no bloat when idle)."""
        self.confirmable()
        if not self._open:
            self.confirmed = max(self.confirmed, server_position)

    def reset(self) -> None:
        """Forget open transactions (a new stream will send them again)."""
        self._open.clear()
        self._by_commit.clear()
        self._pending_events = 0


def unseen_rows(
    ids: Iterable[int],
    marked: Collection[int],
    snapshot: Snapshot,
    xid_of: Callable[[int], int | None],
) -> set[int]:
    """The rows of `ids` a mark missed because their transaction is not visible yet.

    `marked` are the rows the mark changed and `snapshot` the snapshot *the mark itself*
    ran in (one statement: a snapshot read by a later statement may see a commit the
    mark did not, and the row would pass for settled while it is still pending). A row
    the mark missed whose transaction the snapshot sees was settled otherwise (marked
    before, skipped, deleted): it is done. `xid_of` gives a row's (32-bit) xid, or None
    when unknown: a swept row, read in a snapshot that saw it, so it is visible.
    """
    unseen = set()
    for id_ in ids:
        if id_ in marked:
            continue
        xid = xid_of(id_)
        if xid is not None and not snapshot.sees(xid):
            unseen.add(id_)
    return unseen


class Unmarked:
    """Sent events whose row a mark did not see yet (`unseen_rows`), until one does.

    Their transactions stay unconfirmed meanwhile: the tracker counts an event done only
    when `settle` hands it back. A mark awaits the database, and two may run at once
    (the status task's retry and an acknowledgement's): `settle` hands back only events
    that were `tried` by that mark and are still waiting, so none is counted twice, none
    added meanwhile passes for marked, and none comes back after `clear` (a reconnect:
    the new stream's tracker does not know them).
    """

    def __init__(self) -> None:
        self._events: list[OutboxEvent] = []

    def __len__(self) -> int:
        return len(self._events)

    def add(self, events: Iterable[OutboxEvent]) -> None:
        """Events whose mark missed their row (its transaction is not visible yet)."""
        self._events.extend(events)

    def to_retry(self) -> list[OutboxEvent]:
        """The events waiting, to mark again."""
        return list(self._events)

    def settle(self, tried: Iterable[OutboxEvent], missing: Collection[int]) -> list[OutboxEvent]:
        """Of the `tried` events, those now marked (their id not `missing`); they go."""
        tried_now = {id(event) for event in tried}
        done = [e for e in self._events if id(e) in tried_now and e.id not in missing]
        if done:
            gone = {id(event) for event in done}
            self._events = [event for event in self._events if id(event) not in gone]
        return done

    def clear(self) -> None:
        """Forget them (a reconnect: the table and the new stream say what is due)."""
        self._events.clear()


class ReleaseMerge:
    """A release sweep's rows merged with the released keys' events still queued.

    The sweep reads the released keys' pending rows in id order, chunk by chunk as the
    loop takes them (memory bounded by a chunk, whatever the release's size). But rows
    of those keys decoded before the key was parked may still be queued (not fetched
    yet, so never held), and the sweep also reads rows the stream has not decoded yet,
    newer than those. So the queued events of the released keys are taken out of the
    queue (`split`) and each goes back just before the first swept row newer than it
    (`merge`), the rest after the last chunk (`remaining`): per released key, one
    sequence in id order (outbox order). Every other event keeps its place in the
    queue, table-less ones (id 0) included; no other key's order depends on the swept
    rows.

    A row may be both queued and swept: the stream queued it after the release took
    its key off the parked ones and before the sweep's snapshot and hand-over existed,
    and the snapshot saw it pending. The queued copy is the one kept (the stream's
    tracker counts it: it settles its transaction); the swept copy is dropped.
    """

    __slots__ = ("_moved",)

    def __init__(self, moved: Iterable[OutboxEvent]) -> None:
        self._moved = collections.deque(sorted(moved, key=_row_id))

    @classmethod
    def split(
        cls, queued: Iterable[OutboxEvent], keys: frozenset[str]
    ) -> tuple[ReleaseMerge, list[OutboxEvent]]:
        """The merge of the released `keys`' queued rows, and the queue without them."""
        moved: list[OutboxEvent] = []
        rest: list[OutboxEvent] = []
        for event in queued:
            (moved if event.id and event.key in keys else rest).append(event)
        return cls(moved), rest

    def merge(self, row: OutboxEvent) -> list[OutboxEvent]:
        """What to queue for the next swept `row` (swept rows come in id order)."""
        moved = self._moved
        out: list[OutboxEvent] = []
        while moved and moved[0].id < row.id:
            out.append(moved.popleft())
        if moved and moved[0].id == row.id:
            out.append(moved.popleft())  # the queued copy, not the swept one
        else:
            out.append(row)
        return out

    def remaining(self) -> list[OutboxEvent]:
        """The queued events newer than every swept row: they go after the last chunk."""
        out = list(self._moved)
        self._moved.clear()
        return out


def _row_id(event: OutboxEvent) -> int:
    return event.id


def waits_behind(key: str | None, row_id: int, parked: Mapping[str, int]) -> bool:
    """Whether an event of `key` (row `row_id`, 0 when table-less) waits behind a parked one.

    `parked` maps each parked key to the id of its first parked row (0 when that is not
    known: every event of the key waits). Only the events after it in outbox order wait:
    an earlier row of the key, queued in the same stream read or the same transaction as
    the parked row, goes out. A table-less event has no place in the outbox order: it
    waits (and becomes a pending row behind the parked one).
    """
    if key is None:
        return False
    first = parked.get(key)
    return first is not None and (not row_id or row_id > first)


def note_parked(parked: dict[str, int], key: str | None, row_id: int) -> None:
    """Record that row `row_id` of `key` is parked (0: a row whose id is not known)."""
    if key is not None:
        first = parked.get(key)
        parked[key] = row_id if first is None else min(first, row_id)


def parked_copy(content: bytes | None, limit: int) -> tuple[bytes | None, str]:
    """Content to park in place of `content`, and what to add to the reason.

    Content within `limit` bytes is parked as it is. Larger content would break the
    outbox's size CHECK, and parking must never fail: its first `PARKED_COPY_BYTES`
    bytes are parked instead, and the reason says the size and SHA-256 of the original.
    """
    if content is None or len(content) <= limit:
        return content, ""
    digest = hashlib.sha256(content).hexdigest()
    keep = min(PARKED_COPY_BYTES, limit)
    return (
        content[:keep],
        f" (content of {len(content)} bytes, sha256 {digest}, truncated to {keep} bytes)",
    )
