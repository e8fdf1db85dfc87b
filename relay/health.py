"""What /healthz and /readyz report: pure state, updated by the relay loop.

Ready means: connected to PostgreSQL and to the broker, and not stalled. Stalled means
events are pending but nothing was acknowledged for `stall_after_s` (the watchdog).
A standby is ready when its lock connection and the broker answer: it can take over.
When not ready, the reason names the failing part and, when known, what it said.
"""

from __future__ import annotations

import dataclasses
import time

STALL_AFTER_S = 60.0


@dataclasses.dataclass(slots=True)
class Health:
    """Readiness of one relay process. The loop sets it; the HTTP endpoint reads it."""

    stall_after_s: float = STALL_AFTER_S
    database_connected: bool = False
    broker_connected: bool = False
    #: Standby relays (not holding leadership) are ready: they are healthy spares.
    leader: bool = False
    pending_events: int = 0
    last_progress_s: float = dataclasses.field(default_factory=time.monotonic)
    #: The last error from PostgreSQL / the broker while not connected ("" when unknown).
    database_error: str = ""
    broker_error: str = ""

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
        self.leader = leader

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


def broker_probe_due(*, publisher_started: bool, leader: bool, loop_idle: bool) -> bool:
    """Whether the broker gets a metadata probe now.

    Once the publisher started, unless a leader's loop is publishing: its results say
    more than a probe would.
    """
    return publisher_started and (not leader or loop_idle)


def _because(what: str, error: str) -> str:
    return f"{what}: {error}" if error else what
