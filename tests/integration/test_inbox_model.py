"""The claim against a reference model: claims, duplicates, commits and rollbacks mixed."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from relay.inbox import Inbox
from relay.inbox import migrate as inbox_migrate

IDS = [uuid.UUID(int=n) for n in range(1, 9)]


def test_claims_follow_the_model(database_url: str) -> None:
    inbox_migrate.apply(database_url)
    conn = psycopg.connect(database_url)

    class Claims(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            conn.rollback()
            conn.execute("DELETE FROM inbox")
            conn.commit()
            self.committed: set[tuple[str, uuid.UUID]] = set()
            self.pending: set[tuple[str, uuid.UUID]] = set()

        @rule(
            consumer=st.sampled_from(["a", "b"]),
            ids=st.lists(st.sampled_from(IDS), max_size=5),
        )
        def claim_many(self, consumer: str, ids: list[uuid.UUID]) -> None:
            expected = []
            for event_id in ids:
                seen = (consumer, event_id) in self.committed | self.pending
                expected.append(not seen)
                self.pending.add((consumer, event_id))
            assert Inbox(consumer=consumer).claim_many(conn, ids) == expected

        @rule()
        def commit(self) -> None:
            conn.commit()
            self.committed |= self.pending
            self.pending = set()

        @rule()
        def rollback(self) -> None:
            conn.rollback()
            self.pending = set()

        @invariant()
        def stored_claims_are_the_model(self) -> None:
            rows = conn.execute("SELECT consumer, event_id FROM inbox").fetchall()
            assert set(rows) == self.committed | self.pending

    try:
        run_state_machine_as_test(
            Claims, settings=settings(max_examples=40, stateful_step_count=15, deadline=None)
        )
    finally:
        conn.close()


@pytest.mark.parametrize("bad", ["", " ", "a\x00b"])
def test_a_bad_consumer_name_is_refused(bad: str) -> None:
    from relay.errors import ConfigError

    with pytest.raises(ConfigError, match="consumer name"):
        Inbox(consumer=bad)


def test_a_bad_table_name_is_refused() -> None:
    from relay.errors import ConfigError

    with pytest.raises(ConfigError, match="invalid inbox table"):
        Inbox(consumer="c", table="in box")
