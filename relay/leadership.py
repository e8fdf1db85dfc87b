"""Leadership: one active relay per outbox, the others hot standbys.

The leader holds the lease row of ``<schema>.<table>_leader`` (migration 0003): the row
says which session leads (its backend pid, role and application name), since when, and
until when. Only the relay's role may update that row, so no service role can take the
leadership or keep a relay from it; an advisory lock could be taken by any role that can
connect (its key is derivable, and ``pg_locks`` is readable by all).

Every statement is a short autocommit transaction (no session holds a transaction open,
which would pin the cluster's xmin horizon and stop vacuum). The leader renews the lease
every `RENEW_INTERVAL_S`; a standby takes it when the lease ran out (`LEASE_TTL_S`) or at
once when the holder's session has ended (its pid is gone from ``pg_stat_activity``): a
leader that exits, is killed or loses its connection is replaced within a few seconds.
Each new leader bumps the row's ``epoch``: a leader whose renewal finds another epoch
knows it was replaced and stops.

A leader notices a lost connection at once when the server ends the session (the idle
socket turns readable), within `RENEW_INTERVAL_S` otherwise. Between the loss and the
notice, the old leader may still publish the batch in flight while the new one starts:
those events can be published twice (a crash window, like a kill).

A standby that has waited longer than `HOLDER_WARN_AFTER_S` names the holder (pid, role,
application name) at warning level, and again whenever the holder changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import time
from typing import Any, Final

import psycopg
import psycopg.errors
import structlog
from psycopg import sql

from relay import connection
from relay import sql as relay_sql
from relay.errors import DatabaseError, MigrationError, PermanentDatabaseError, first_line

log = structlog.get_logger("relay.leadership")

RETRY_INTERVAL_S: Final = 1.0
#: How long a lease lasts without renewal (a leader that hangs is replaced after it).
LEASE_TTL_S: Final = 15.0
#: Seconds between renewals of the lease (and checks of the leader's connection).
RENEW_INTERVAL_S: Final = 5.0
CHECK_TIMEOUT_S: Final = 10.0
#: A standby waiting longer than this names the leader at warning level.
HOLDER_WARN_AFTER_S: Final = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class Holder:
    """Who holds (or last held) the leadership of an outbox."""

    epoch: int
    pid: int | None
    role: str | None
    application_name: str | None
    acquired_at: dt.datetime | None
    leader_until: dt.datetime | None
    #: The lease is current and its session alive.
    held: bool

    def describe(self) -> dict[str, object]:
        """Log fields naming the holder."""
        return {
            "leader_pid": self.pid,
            "leader_role": self.role,
            "leader_application_name": self.application_name,
            "leader_epoch": self.epoch,
            "leader_since": self.acquired_at.isoformat() if self.acquired_at else None,
        }


def holder_from(row: tuple[Any, ...] | None) -> Holder | None:
    """A `Holder` from the ``holder`` query's row."""
    if row is None:
        return None
    epoch, pid, role, application_name, acquired_at, leader_until, held = row
    return Holder(epoch, pid, role, application_name, acquired_at, leader_until, bool(held))


def queries(schema: str, table: str) -> dict[str, sql.Composed]:
    """The leadership statements for the outbox ``schema.table``."""
    names = relay_sql.identifiers(schema, table)
    return {
        name: relay_sql.query("leadership", name, names)
        for name in ("take", "renew", "give_up", "holder")
    }


class Leadership:
    """The lease leadership of one outbox.

    Usage::

        leadership = Leadership(conninfo, lock_id, schema="public", table="outbox")
        while await leadership.acquire(stop):   # False once `stop` is set
            ...relay until leadership.lost is set or stop...
            await leadership.release()
    """

    def __init__(
        self,
        conninfo: str,
        lock_id: int = 0,
        *,
        schema: str = "public",
        table: str = "outbox",
        retry_interval_s: float = RETRY_INTERVAL_S,
        check_interval_s: float = RENEW_INTERVAL_S,
        lease_ttl_s: float = LEASE_TTL_S,
        holder_warn_after_s: float = HOLDER_WARN_AFTER_S,
    ) -> None:
        self._conninfo = conninfo
        #: Kept for the logs of older deployments; leadership no longer uses it.
        self.lock_id = lock_id
        self.outbox = f"{schema}.{table}"
        self._queries = queries(schema, table)
        self._retry_interval_s = retry_interval_s
        self._renew_interval_s = min(check_interval_s, lease_ttl_s / 3)
        self._ttl_s = lease_ttl_s
        self._warn_after_s = holder_warn_after_s
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._epoch: int | None = None
        self._watch: asyncio.Task[None] | None = None
        #: Set when leadership held by this process was lost.
        self.lost = asyncio.Event()
        #: Why the last attempt to take the lock failed; None once one got an answer.
        self.problem: str | None = None

    @property
    def connected(self) -> bool:
        """True while the lock connection is open and its last query worked (probes)."""
        return self._conn is not None and not self._conn.closed and self.problem is None

    @property
    def held(self) -> bool:
        """True while this process is the leader, as far as it knows."""
        return self._epoch is not None and not self.lost.is_set()

    @property
    def epoch(self) -> int | None:
        """The fencing token of this process's leadership, None when it does not lead."""
        return self._epoch

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this process is the leader (True), or until `stop` is set (False)."""
        waiting_logged = False
        started = time.monotonic()
        warned_about: tuple[object, ...] | None = None
        failures = 0
        while not stop.is_set():
            try:
                epoch = await self._try_take()
                self.problem = None  # the lease query answered: the connection is fine
                if epoch is not None:
                    log.info("leadership acquired", outbox=self.outbox, epoch=epoch)
                    self._epoch = epoch
                    self.lost.clear()
                    self._watch = asyncio.create_task(self._check(), name="leadership-check")
                    return True
                if not waiting_logged:
                    log.info("standing by: another relay is the leader", outbox=self.outbox)
                    waiting_logged = True
                if time.monotonic() - started >= self._warn_after_s:
                    holder = await self.holder()
                    key = (holder.pid, holder.epoch) if holder else None
                    if holder is not None and key != warned_about:
                        log.warning(
                            "cannot lead: the leadership is held by another session",
                            outbox=self.outbox,
                            waiting_s=round(time.monotonic() - started),
                            **holder.describe(),
                        )
                        warned_about = key
                failures = 0
            except DatabaseError as exc:
                self.problem, failures = str(exc), failures + 1
                permanent = isinstance(exc, PermanentDatabaseError)
                (log.error if permanent else log.warning)("cannot take leadership", error=str(exc))
            backoff = min(2 ** max(failures - 1, 0), 30)  # 1, 2, 4 ... 30 retry intervals
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._retry_interval_s * backoff)
        await self._close()  # a standby told to stop keeps no session open
        return False

    async def _execute(self, name: str, **params: object) -> tuple[Any, ...] | None:
        if self._conn is None or self._conn.closed:
            self._conn = await connection.connect(self._conninfo, "leadership")
        try:
            cursor = await asyncio.wait_for(
                self._conn.execute(self._queries[name], params), CHECK_TIMEOUT_S
            )
            return await cursor.fetchone() if cursor.description else None
        except psycopg.errors.UndefinedTable:
            await self._close()
            # No lease table: the outbox is not migrated (or only to before 0003).
            raise MigrationError(
                f"outbox table {self.outbox} not found: run `outbox-relay migrate` first"
            ) from None
        except psycopg.errors.InsufficientPrivilege:
            await self._close()
            # Standing by forever would hide it: the grants are missing (older grants).
            raise MigrationError(
                f"this role may not take the leadership lease {self.outbox}_leader: "
                "run `outbox-relay grants --relay-role ...` (SELECT, UPDATE on it)"
            ) from None
        except (psycopg.Error, TimeoutError) as exc:
            await self._close()
            reason = first_line(exc) if str(exc) else type(exc).__name__
            raise DatabaseError(f"leadership lease query failed: {reason}") from None

    async def _try_take(self) -> int | None:
        row = await self._execute("take", ttl_s=self._ttl_s)
        return int(row[0]) if row else None

    async def holder(self) -> Holder | None:
        """Who holds the leadership now (None when the lease table has no row)."""
        return holder_from(await self._execute("holder"))

    async def _check(self) -> None:
        """Renew the lease every `renew_interval_s`; set `lost` when that fails.

        Idle, the connection sends nothing: the server writing to it means it is ending
        the session (shutdown, restart, ``pg_terminate_backend``), so waiting for the
        socket to become readable notices that at once, at no cost.
        """
        loop = asyncio.get_running_loop()
        while True:
            conn = self._conn
            if conn is None:
                self._lose("the lease connection closed")
                return
            readable = asyncio.Event()
            try:
                loop.add_reader(conn.fileno(), readable.set)
            except (psycopg.Error, OSError, ValueError):
                readable.set()  # already closed: the renewal below says how
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(readable.wait(), self._renew_interval_s)
            finally:
                with contextlib.suppress(psycopg.Error, OSError, ValueError):
                    loop.remove_reader(conn.fileno())
            try:
                row = await self._execute("renew", ttl_s=self._ttl_s, epoch=self._epoch)
            except DatabaseError as exc:
                self._lose(str(exc))
                return
            if row is None:
                self._lose("another relay took the lease (it ran out before renewal)")
                return

    def _lose(self, reason: str) -> None:
        log.error("leadership lost", outbox=self.outbox, epoch=self._epoch, reason=reason)
        self.lost.set()

    async def release(self) -> None:
        """Give up leadership: free the lease at once for a standby."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        if self._epoch is not None and self._conn is not None and not self._conn.closed:
            with contextlib.suppress(DatabaseError):
                await self._execute("give_up", epoch=self._epoch)
            log.info("leadership released", outbox=self.outbox, epoch=self._epoch)
        self._epoch = None
        await self._close()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
