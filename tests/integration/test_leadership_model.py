"""The lease's statements against a reference model: at most one leader, epochs grow."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from hypothesis import settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from hypothesis.strategies import integers

from relay.leadership import queries

SESSIONS = 3
Q = queries("public", "outbox")


class Lease(RuleBasedStateMachine):
    """Sessions take, renew, give up, die; the lease can run out."""

    #: Set by the test: the database the sessions connect to.
    database_url = ""

    def __init__(self) -> None:
        super().__init__()
        database_url = self.database_url
        self.conns: list[psycopg.Connection[Any] | None] = [None] * SESSIONS
        with psycopg.connect(database_url, autocommit=True) as owner:
            owner.execute("UPDATE outbox_leader SET pid = NULL, leader_until = NULL")
            row = owner.execute("SELECT epoch FROM outbox_leader").fetchone()
        assert row is not None
        # The model: who leads (a session index) and the epoch of its lease.
        self.leader: int | None = None
        self.epoch: int = row[0]
        self.epochs: dict[int, int] = {}
        #: The leader whose lease ran out while nobody took it: it may still renew.
        self.lapsed: int | None = None

    def _conn(self, i: int) -> psycopg.Connection[Any]:
        conn = self.conns[i]
        if conn is None:
            conn = psycopg.connect(self.database_url, autocommit=True)
            self.conns[i] = conn
        return conn

    @rule(i=integers(0, SESSIONS - 1))
    def take(self, i: int) -> None:
        row = self._conn(i).execute(Q["take"], {"ttl_s": 60}).fetchone()
        if self.leader is None or self.leader == i:
            assert row is not None
            self.epoch += 1
            assert row[0] == self.epoch
            self.leader, self.epochs[i] = i, self.epoch
            self.lapsed = None
        else:
            assert row is None  # a live lease of another session

    @rule(i=integers(0, SESSIONS - 1))
    def renew(self, i: int) -> None:
        if i not in self.epochs:
            return
        params = {"ttl_s": 60, "epoch": self.epochs[i]}
        row = self._conn(i).execute(Q["renew"], params).fetchone()
        current = self.epochs[i] == self.epoch
        assert (row is not None) == (current and i in (self.leader, self.lapsed))
        if row is not None:
            self.leader, self.lapsed = i, None

    @rule(i=integers(0, SESSIONS - 1))
    def give_up(self, i: int) -> None:
        if i not in self.epochs:
            return
        self._conn(i).execute(Q["give_up"], {"epoch": self.epochs[i]})
        if self.leader == i and self.epochs[i] == self.epoch:
            self.leader = None
        if self.lapsed == i:
            self.lapsed = None
        del self.epochs[i]

    @precondition(lambda self: self.leader is not None)
    @rule()
    def leader_dies(self) -> None:
        assert self.leader is not None
        conn = self.conns[self.leader]
        assert conn is not None
        pid = conn.info.backend_pid
        conn.close()
        with psycopg.connect(self.database_url, autocommit=True) as owner:
            owner.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        self.conns[self.leader] = None
        self.epochs.pop(self.leader, None)
        self.leader = None

    @rule()
    def lease_runs_out(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as owner:
            owner.execute("UPDATE outbox_leader SET leader_until = now() - interval '1 s'")
        if self.leader is not None:
            self.leader, self.lapsed = None, self.leader

    @invariant()
    def the_row_names_the_leader(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as owner:
            row = owner.execute(Q["holder"]).fetchone()
        assert row is not None
        epoch, pid, held = row[0], row[1], row[6]
        assert epoch == self.epoch
        assert held == (self.leader is not None)
        if self.leader is not None:
            conn = self.conns[self.leader]
            assert conn is not None
            assert pid == conn.info.backend_pid

    def teardown(self) -> None:
        for conn in self.conns:
            if conn is not None:
                conn.close()


@pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
def test_the_lease_matches_its_model(database_url: str) -> None:
    class LeaseOnThisDatabase(Lease):
        pass

    LeaseOnThisDatabase.database_url = database_url
    run_state_machine_as_test(
        LeaseOnThisDatabase,
        settings=settings(max_examples=15, stateful_step_count=12, deadline=None, database=None),
    )
