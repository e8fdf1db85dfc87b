"""What /healthz and /readyz report: pure state, updated by the relay loop.

Ready means: connected to PostgreSQL and to the broker, and not stalled. Stalled means
events are pending but nothing was acknowledged for `stall_after_s` (the watchdog).
A standby is ready when its lock connection and the broker answer: it can take over.
When not ready, the reason names the failing part and, when known, what it said; a
leader's source names the connection that is down (in WAL mode: the replication stream,
the main or the sweep connection) once it has been down for `CONNECTION_GRACE_S`, or at
once when a call through it failed.

Alive (/healthz) means: not wedged. A leader is wedged when its running relay loop has
not come round (no fetch ended, failed or not) for `wedged_after_s`: a call that never
returns, which only a restart ends. Starting the source is not counted: creating a slot
waits for every transaction running then, however long, and a restart would wait again.
Every outage the relay retries by itself (the broker or PostgreSQL unreachable, a stall
behind a failing event) keeps the loop turning: those make the relay not ready, never
dead, as restarting would not help.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

from relay.source import ConnectionProblem

STALL_AFTER_S = 60.0
#: Seconds a source's connection may be down before /readyz says so by itself: a
#: replication stream that broke reconnects within about a second.
CONNECTION_GRACE_S = 5.0
#: Seconds without a turn of the leader's relay loop before /healthz fails, at least.
#: Above every bounded wait of one turn: a publish (a few producer request timeouts,
#: 30 s each by default), a connection attempt (10 s), the longest backoff (10 s).
WEDGED_AFTER_S = 300.0
#: ...or this many producer request timeouts, when longer (see `wedged_after_s`).
WEDGE_REQUEST_TIMEOUTS = 10


@dataclasses.dataclass(slots=True)
class Health:
    """Readiness of one relay process. The loop sets it; the HTTP endpoint reads it."""

    stall_after_s: float = STALL_AFTER_S
    wedged_after_s: float = WEDGED_AFTER_S
    database_connected: bool = False
    broker_connected: bool = False
    #: Standby relays (not holding leadership) are ready: they are healthy spares.
    leader: bool = False
    pending_events: int = 0
    last_progress_s: float = dataclasses.field(default_factory=time.monotonic)
    #: The last error from PostgreSQL / the broker while not connected ("" when unknown).
    database_error: str = ""
    broker_error: str = ""
    #: What the leader's source said about its connections when last asked.
    connection_problems: Mapping[str, ConnectionProblem] = dataclasses.field(default_factory=dict)
    #: When the leader's relay loop last came round (or started).
    last_turn_s: float = dataclasses.field(default_factory=time.monotonic)
    #: True while the leader's relay loop runs (its source started).
    looping: bool = False

    def progressed(self, now_s: float) -> None:
        """Record that a batch was acknowledged, or that nothing was pending."""
        self.last_progress_s = now_s

    def set_leader(self, *, leader: bool, now_s: float) -> None:
        """Record leadership gained or lost.

        A new leader's stall clock starts now: what it did (or did not) acknowledge in an
        earlier term says nothing about this one.
        """
        if leader and not self.leader:
            self.last_progress_s = now_s
        if not leader:
            self.connection_problems = {}
            self.looping = False
        self.leader = leader

    def loop_started(self, now_s: float) -> None:
        """Record that the leader's relay loop runs: from now on it must come round."""
        self.looping = True
        self.last_turn_s = now_s

    def loop_ended(self) -> None:
        """Record that the relay loop stopped (its shutdown is bounded by the caller)."""
        self.looping = False

    def loop_turned(self, now_s: float, problems: Mapping[str, ConnectionProblem]) -> None:
        """Record one turn of the leader's loop, and its source's connection problems."""
        self.last_turn_s = now_s
        self.connection_problems = problems

    def lock_connection_observed(self, *, connected: bool, problem: str) -> None:
        """Record the lock connection's state: a standby is exactly as healthy as it.

        A leader's database state is the relay loop's to report (its lock connection may
        be fine while its source's connection is not).
        """
        if self.leader:
            return
        self.database_connected = connected
        if connected:
            self.database_error = ""
        elif problem:
            self.database_error = problem

    def database_answered(self, error: str | None) -> None:
        """Record what the leader's own connection did (`error` None: it answered).

        The error replaces what was said before, so /readyz never shows a stale reason.
        """
        self.database_connected = error is None
        self.database_error = error or ""

    def broker_answered(self, error: str | None) -> bool:
        """Record a probe's or a batch's answer from the broker (`error` None: it answered).

        Returns True when that changed whether the broker counts as connected (worth a
        log line). The error replaces what was said before.
        """
        changed = self.broker_connected != (error is None)
        self.broker_connected = error is None
        self.broker_error = error or ""
        return changed

    def readiness(self, now_s: float) -> tuple[bool, str]:
        """Whether the relay is ready, and why not when it is not."""
        down = self._connection_down(now_s)
        if down:
            return False, f"not connected to PostgreSQL: {down}"
        if not self.database_connected:
            return False, _because("not connected to PostgreSQL", self.database_error)
        if not self.broker_connected:
            return False, _because("not connected to the broker", self.broker_error)
        stalled_for = now_s - self.last_progress_s
        if self.leader and self.pending_events > 0 and stalled_for > self.stall_after_s:
            return (
                False,
                (
                    f"stalled: {self.pending_events} events pending, "
                    f"no progress for {stalled_for:.0f} s"
                ),
            )
        return True, "ready"

    def liveness(self, now_s: float) -> tuple[bool, str]:
        """Whether the relay is alive (not wedged), and why not when it is not."""
        waited = now_s - self.last_turn_s
        if self.leader and self.looping and waited > self.wedged_after_s:
            return False, f"wedged: the relay loop has not come round for {waited:.0f} s"
        return True, "ok"

    def _connection_down(self, now_s: float) -> str:
        """The leader's source connection that is down, the longest first ("" when none).

        Named once down for `CONNECTION_GRACE_S`, or at once when the last call failed.
        """
        if not self.leader or not self.connection_problems:
            return ""
        name, problem = min(self.connection_problems.items(), key=lambda item: item[1].since_s)
        if self.database_connected and now_s - problem.since_s <= CONNECTION_GRACE_S:
            return ""
        return _because(f"{name} connection down", problem.error)


def wedged_after_s(kafka_request_timeout_s: float) -> float:
    """The wedge bound for a producer request timeout: above a publish's longest wait.

    One publish may wait for a fresh producer, a metadata request and a few sends (a
    batch split in halves), each up to the request timeout.
    """
    return max(WEDGED_AFTER_S, WEDGE_REQUEST_TIMEOUTS * kafka_request_timeout_s)


def broker_probe_due(*, publisher_started: bool, leader: bool, loop_idle: bool) -> bool:
    """Whether the broker gets a metadata probe now.

    Once the publisher started, unless a leader's loop is publishing: its results say
    more than a probe would.
    """
    return publisher_started and (not leader or loop_idle)


def _because(what: str, error: str) -> str:
    return f"{what}: {error}" if error else what
