"""Leadership: one active relay per outbox, the others hot standbys.

The leader holds a session-level advisory lock (``pg_try_advisory_lock``) on a dedicated
connection. PostgreSQL releases the lock the moment that session ends: the leader
exiting, being killed (its socket closes), or losing its connection. Standbys try to take
the lock every `RETRY_INTERVAL_S`, so one takes over within a few seconds.

A leader that loses its connection loses the lock with it; it notices at once when the
server ends the session (the idle socket turns readable), within `CHECK_INTERVAL_S`
otherwise (a ``SELECT 1`` bounded by `CHECK_TIMEOUT_S`), and stops relaying. Between the
loss and the notice, the old leader may still publish the batch in flight while the new
one starts: those events can be published twice (a crash window, like a kill). TCP
keepalives on both ends bound how long a leader cut off by the network keeps the lock.

Both modes use it: poll mode so two relays never publish the same rows, WAL mode so a
standby is ready when the slot's consumer dies.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

import psycopg
import structlog

from relay import connection
from relay.errors import DatabaseError, PermanentDatabaseError, first_line

log = structlog.get_logger("relay.leadership")

RETRY_INTERVAL_S: Final = 1.0
#: Seconds between ``SELECT 1`` on an idle lock connection (a closing server is noticed
#: at once without it; this covers a silent network).
CHECK_INTERVAL_S: Final = 10.0
CHECK_TIMEOUT_S: Final = 10.0


class Leadership:
    """The advisory-lock leadership of one outbox.

    Usage::

        leadership = Leadership(conninfo, lock_id)
        while await leadership.acquire(stop):   # False once `stop` is set
            ...relay until leadership.lost is set or stop...
            await leadership.release()
    """

    def __init__(
        self,
        conninfo: str,
        lock_id: int,
        *,
        retry_interval_s: float = RETRY_INTERVAL_S,
        check_interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        self._conninfo = conninfo
        self.lock_id = lock_id
        self._retry_interval_s = retry_interval_s
        self._check_interval_s = check_interval_s
        self._conn: psycopg.AsyncConnection[Any] | None = None
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
        return self._conn is not None and not self.lost.is_set()

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this process is the leader (True), or until `stop` is set (False)."""
        waiting_logged = False
        failures = 0
        while not stop.is_set():
            try:
                if await self._try_lock():
                    log.info("leadership acquired", lock_id=self.lock_id)
                    self.lost.clear()
                    self._watch = asyncio.create_task(self._check(), name="leadership-check")
                    return True
                if not waiting_logged:
                    log.info("standing by: another relay is the leader", lock_id=self.lock_id)
                    waiting_logged = True
                failures = 0
            except DatabaseError as exc:
                self.problem, failures = str(exc), failures + 1
                permanent = isinstance(exc, PermanentDatabaseError)
                (log.error if permanent else log.warning)("cannot take leadership", error=str(exc))
            backoff = min(2 ** max(failures - 1, 0), 30)  # 1, 2, 4 ... 30 retry intervals
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._retry_interval_s * backoff)
        return False

    async def _try_lock(self) -> bool:
        if self._conn is None or self._conn.closed:
            self._conn = await connection.connect(self._conninfo, "leadership")
        try:
            cursor = await self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.lock_id,))
            row = await cursor.fetchone()
        except psycopg.Error as exc:
            await self._close()
            raise DatabaseError(f"advisory lock query failed: {first_line(exc)}") from None
        self.problem = None
        return bool(row and row[0])

    async def _check(self) -> None:
        """Watch the lock connection; set `lost` when it fails.

        Idle, the connection sends nothing: the server writing to it means it is ending
        the session (shutdown, restart, ``pg_terminate_backend``), so waiting for the
        socket to become readable notices that at once, at no cost. A ``SELECT 1`` every
        `check_interval_s` covers a silent network (keepalives then break the socket).
        """
        loop = asyncio.get_running_loop()
        while True:
            conn = self._conn
            if conn is None:
                return
            readable = asyncio.Event()
            try:
                loop.add_reader(conn.fileno(), readable.set)
            except (psycopg.Error, OSError, ValueError):
                readable.set()  # already closed: the query below says how
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(readable.wait(), self._check_interval_s)
            finally:
                with contextlib.suppress(psycopg.Error, OSError, ValueError):
                    loop.remove_reader(conn.fileno())
            try:
                await asyncio.wait_for(conn.execute("SELECT 1"), CHECK_TIMEOUT_S)
            except (psycopg.Error, TimeoutError) as exc:
                log.error(  # noqa: TRY400 - the reason fits one line; no traceback
                    "leadership lost: the lock connection failed",
                    lock_id=self.lock_id,
                    error=first_line(exc) if str(exc) else type(exc).__name__,
                )
                self.lost.set()
                await self._close()
                return

    async def release(self) -> None:
        """Give up leadership (closing the session releases the lock)."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        if self._conn is not None:
            log.info("leadership released", lock_id=self.lock_id)
        await self._close()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
