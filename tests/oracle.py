"""The one order oracle of every delivery test: what reached Kafka against the outbox.

A consumer that drops duplicates by ``event_id`` keeps the *first* copy of each event; a
compacted topic keeps the *last*. Both must see, per key, the events in outbox order,
all of them in one partition. `outbox_rows` reads the expected events (outbox order is
id order for events written one transaction after another, the only order the outbox
defines); `check` compares; `assert_delivered` fails a test with what went wrong.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import psycopg

from tests.support import Consumed


@dataclasses.dataclass(frozen=True, slots=True)
class Expected:
    """One outbox event a consumer must see."""

    event_id: str
    key: str | None
    topic: str
    #: The Kafka value the record must carry (None: not checked).
    value: bytes | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """What the consumer saw, measured against the outbox."""

    missing: list[str]
    unexpected: list[str]
    #: Per key, the outbox positions of the first copies where they are out of order.
    first_copy_disorder: dict[str | None, list[int]]
    last_copy_disorder: dict[str | None, list[int]]
    split_keys: list[str | None]
    altered: list[str]
    duplicates: int

    @property
    def ok(self) -> bool:
        """Nothing missing, unexpected, altered or split, and both orders held."""
        return not (
            self.missing
            or self.unexpected
            or self.first_copy_disorder
            or self.last_copy_disorder
            or self.split_keys
            or self.altered
        )


def outbox_rows(
    database_url: str, *, table: str = "outbox", where: str = "state <> 'parked'"
) -> list[Expected]:
    """The events of the outbox table `table`, in id order (the test's own SQL)."""
    query = f"SELECT event_id::text, key, topic FROM {table} WHERE {where} ORDER BY id"
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(query).fetchall()
    return [Expected(event_id, key, topic) for event_id, key, topic in rows]


def _disorder(positions: Sequence[int]) -> list[int]:
    return list(positions) if list(positions) != sorted(positions) else []


def check(
    records: Iterable[Consumed], expected: Sequence[Expected], *, complete: bool = True
) -> Verdict:
    """Compare `records` with `expected` (in outbox order).

    With `complete`, every expected event must have arrived; records of events not in
    `expected` are reported as unexpected either way.
    """
    position = {e.event_id: n for n, e in enumerate(expected)}
    wanted = {e.event_id: e for e in expected}
    ordered = sorted(records, key=lambda r: (r.topic, r.partition, r.offset))
    seen: dict[str, list[Consumed]] = {}
    unexpected: list[str] = []
    for record in ordered:
        if record.event_id not in wanted:
            unexpected.append(record.event_id)
            continue
        seen.setdefault(record.event_id, []).append(record)
    missing = [e.event_id for e in expected if e.event_id not in seen] if complete else []
    altered = [
        event_id
        for event_id, copies in seen.items()
        if wanted[event_id].value is not None
        and any(c.value != wanted[event_id].value for c in copies)
    ]
    by_key: dict[str | None, list[Consumed]] = {}
    for record in ordered:
        if record.event_id in wanted:
            by_key.setdefault(record.key, []).append(record)
    split = []
    first_disorder: dict[str | None, list[int]] = {}
    last_disorder: dict[str | None, list[int]] = {}
    for key, keyed in by_key.items():
        topics = {r.topic for r in keyed}
        if any(len({r.partition for r in keyed if r.topic == t}) > 1 for t in topics):
            split.append(key)
        first: dict[str, int] = {}
        last: dict[str, int] = {}
        for n, record in enumerate(keyed):
            first.setdefault(record.event_id, n)
            last[record.event_id] = n
        firsts = [position[e] for e in sorted(first, key=first.__getitem__)]
        lasts = [position[e] for e in sorted(last, key=last.__getitem__)]
        if bad := _disorder(firsts):
            first_disorder[key] = bad
        if bad := _disorder(lasts):
            last_disorder[key] = bad
    duplicates = sum(len(copies) - 1 for copies in seen.values())
    return Verdict(missing, unexpected, first_disorder, last_disorder, split, altered, duplicates)


def assert_delivered(
    records: Iterable[Consumed],
    expected: Sequence[Expected],
    *,
    complete: bool = True,
    max_duplicates: int | None = None,
    last_copies: bool = True,
) -> Verdict:
    """Fail unless `check` finds everything delivered in per-key order.

    `last_copies=False` only where the README allows it (leadership moved with a batch in
    flight); `max_duplicates` bounds the copies beyond the first.
    """
    verdict = check(records, expected, complete=complete)
    assert not verdict.missing, f"{len(verdict.missing)} events missing: {verdict.missing[:5]}"
    assert not verdict.unexpected, f"unexpected events: {verdict.unexpected[:5]}"
    assert not verdict.altered, f"payloads altered: {verdict.altered[:5]}"
    assert not verdict.split_keys, f"keys spread over partitions: {verdict.split_keys[:5]}"
    assert not verdict.first_copy_disorder, (
        f"first copies out of outbox order: {dict(list(verdict.first_copy_disorder.items())[:3])}"
    )
    if last_copies:
        assert not verdict.last_copy_disorder, (
            f"last copies out of outbox order: {dict(list(verdict.last_copy_disorder.items())[:3])}"
        )
    if max_duplicates is not None:
        assert verdict.duplicates <= max_duplicates, f"{verdict.duplicates} duplicates"
    return verdict
