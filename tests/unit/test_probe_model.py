"""The readiness and liveness logic against a small reference model (no server).

The machine drives `Health` the way the relay does: the probe task (every few
seconds) reports the lock connection and, when `broker_probe_due`, a broker
probe; the leader's loop reports fetches, publish results and idle turns; leadership
comes and goes. The model holds what the README promises for `/readyz`: a standby is as
ready as its lock connection; a leader as its source's connection; the broker's state is
the latest answer (a probe when nothing is published, else the publish results); 503
names the failing part (PostgreSQL first, then the broker, then a stall) and the latest
error said about it; 200 again once the part answers. A leader's source names its
connection that is down (the longest down first) once past the grace, or at once when
the last call failed. ``/healthz`` fails only when a leader's running loop has not come
round for the wedge bound: a broker or database outage keeps it turning, so never kills
it; starting the source (a slot's creation may wait long) does not count.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from hypothesis.strategies import booleans, floats, integers, sampled_from

from relay.health import CONNECTION_GRACE_S, STALL_AFTER_S, Health, broker_probe_due
from relay.source import ConnectionProblem

ERRORS = ["", "connection refused", "password authentication failed for user relay"]
BROKER_ERRORS = ["KafkaConnectionError: no broker", "broker refuses InitProducerId"]
CONNECTIONS = ["WAL stream", "WAL main", "WAL sweep"]
#: Small enough for a run of steps to reach it.
WEDGED_AFTER_S = 100.0


class Probes(RuleBasedStateMachine):
    """One relay process: the world changes, the relay observes it, the probe answers."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.health = Health(
            last_progress_s=self.now, last_turn_s=self.now, wedged_after_s=WEDGED_AFTER_S
        )
        # The world.
        self.lock_ok = True
        self.lock_problem = ""
        self.broker_up = True
        self.broker_failure = BROKER_ERRORS[0]
        self.publisher_started = False
        self.loop_running = False
        self.loop_idle = True
        #: The leader's source: its connections that are down (as it would report them).
        self.source_down: dict[str, ConnectionProblem] = {}
        # The model: what each part was last seen to be, as the README describes it.
        self.leader = False
        self.database = (False, "")
        self.broker = (False, "")
        self.pending = 0
        self.stall_clock = self.now
        self.turned_at = self.now
        self.problems_seen: dict[str, ConnectionProblem] = {}

    # --- the world ------------------------------------------------------------------

    @rule(seconds=floats(0.0, 40.0))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule(ok=booleans(), problem=sampled_from(ERRORS))
    def lock_connection_changes(self, *, ok: bool, problem: str) -> None:
        self.lock_ok, self.lock_problem = ok, "" if ok else problem

    @rule(up=booleans(), failure=sampled_from(BROKER_ERRORS))
    def broker_changes(self, *, up: bool, failure: str) -> None:
        self.broker_up, self.broker_failure = up, failure

    @precondition(lambda self: self.loop_running)
    @rule(name=sampled_from(CONNECTIONS), down=booleans(), error=sampled_from(ERRORS))
    def source_connection_changes(self, *, name: str, down: bool, error: str) -> None:
        # WalSource: a connection breaks (since the first failure) or a reconnect works.
        if not down:
            self.source_down = {}
        else:
            was = self.source_down.get(name)
            since = was.since_s if was is not None else self.now
            self.source_down[name] = ConnectionProblem(error, since)

    # --- what the relay does ---------------------------------------------------------

    @precondition(lambda self: not self.publisher_started)
    @rule()
    def publisher_connects(self) -> None:
        # run.py's _connect_publisher: one attempt.
        self.publisher_started = self.broker_up
        self.health.broker_answered(None if self.broker_up else self.broker_failure)
        self.broker = (True, "") if self.broker_up else (False, self.broker_failure)

    @rule()
    def probe_tick(self) -> None:
        # run.py's _probe: one turn.
        self.health.lock_connection_observed(connected=self.lock_ok, problem=self.lock_problem)
        if not self.leader:
            # A lost connection without a new word keeps what was said last.
            said = "" if self.lock_ok else self.lock_problem or self.database[1]
            self.database = (self.lock_ok, said)
        due = broker_probe_due(
            publisher_started=self.publisher_started,
            leader=self.health.leader,
            loop_idle=not self.loop_running or self.loop_idle,
        )
        # The model's rule: probe whenever publish results say nothing.
        assert due == (self.publisher_started and not (self.leader and not self.loop_idle))
        if due:
            changed = self.health.broker_answered(None if self.broker_up else self.broker_failure)
            assert changed == (self.broker[0] != self.broker_up)
            self.broker = (True, "") if self.broker_up else (False, self.broker_failure)

    @rule(gained=booleans())
    def leadership_changes(self, *, gained: bool) -> None:
        if gained == self.leader:
            return
        self.health.set_leader(leader=gained, now_s=self.now)
        if gained:
            self.stall_clock = self.now
        else:
            self.loop_running, self.loop_idle = False, True
            self.source_down, self.problems_seen = {}, {}
        self.leader = gained

    @precondition(lambda self: self.leader and not self.loop_running)
    @rule(ok=booleans(), error=sampled_from(ERRORS[1:]))
    def source_starts(self, *, ok: bool, error: str) -> None:
        # run.py's _lead: the source's start succeeds (the loop runs) or fails.
        self.health.database_answered(None if ok else error)
        self.database = (ok, "" if ok else error)
        self.loop_running = ok
        if ok:
            # loop.py: RelayLoop.run begins.
            self.health.loop_started(self.now)
            self.turned_at = self.now

    @precondition(lambda self: self.loop_running)
    @rule(events=integers(0, 50))
    def backlog_measured(self, events: int) -> None:
        self.health.pending_events = self.pending = events

    @precondition(lambda self: self.loop_running)
    @rule()
    def loop_idles(self) -> None:
        # loop.py: an empty fetch, then _idle.
        self.fetch_ends()
        self.health.database_answered(None)
        self.health.progressed(self.now)
        self.loop_idle = True
        self.database = (True, "")
        self.stall_clock = self.now

    @precondition(lambda self: self.loop_running)
    @rule(complete=booleans())
    def loop_publishes(self, *, complete: bool) -> None:
        # loop.py: a batch fetched and published; the broker's answer decides.
        self.fetch_ends()
        self.health.database_answered(None)
        self.database = (True, "")
        self.loop_idle = False
        if self.broker_up:
            self.health.broker_answered(None)
            self.broker = (True, "")
            if complete:
                self.health.progressed(self.now)
                self.stall_clock = self.now
        else:
            # Every event unsettled: the loop passes the first failure's error.
            self.health.broker_answered(self.broker_failure)
            self.broker = (False, self.broker_failure)

    @precondition(lambda self: self.loop_running)
    @rule(error=sampled_from(ERRORS[1:]))
    def loop_loses_the_database(self, error: str) -> None:
        # loop.py: a fetch failed; _recover retries.
        self.fetch_ends()
        self.health.database_answered(error)
        self.database = (False, error)

    def fetch_ends(self) -> None:
        # loop.py's _turned: after every fetch, failed or not.
        self.health.loop_turned(self.now, dict(self.source_down))
        self.turned_at = self.now
        self.problems_seen = dict(self.source_down)

    # --- the promise ------------------------------------------------------------------

    def expected(self) -> tuple[bool, str]:
        database_ok, database_error = self.database
        if self.leader and self.problems_seen:
            longest = min(self.problems_seen, key=lambda name: self.problems_seen[name].since_s)
            problem = self.problems_seen[longest]
            if not database_ok or self.now - problem.since_s > CONNECTION_GRACE_S:
                down = _because(f"{longest} connection down", problem.error)
                return False, f"not connected to PostgreSQL: {down}"
        if not database_ok:
            return False, _because("not connected to PostgreSQL", database_error)
        broker_ok, broker_error = self.broker
        if not broker_ok:
            return False, _because("not connected to the broker", broker_error)
        waited = self.now - self.stall_clock
        if self.leader and self.pending > 0 and waited > STALL_AFTER_S:
            return False, f"stalled: {self.pending} events pending, no progress for {waited:.0f} s"
        return True, "ready"

    @invariant()
    def readyz_tells_the_truth(self) -> None:
        assert self.health.readiness(self.now) == self.expected()

    @invariant()
    def healthz_fails_only_on_a_wedge(self) -> None:
        waited = self.now - self.turned_at
        if self.leader and self.loop_running and waited > WEDGED_AFTER_S:
            expected = (False, f"wedged: the relay loop has not come round for {waited:.0f} s")
        else:
            expected = (True, "ok")
        assert self.health.liveness(self.now) == expected


def _because(what: str, error: str) -> str:
    return f"{what}: {error}" if error else what


Probes.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
test_probes = Probes.TestCase
