"""The one way the daemon connects to PostgreSQL: named, bounded, kept alive.

Every daemon connection (poll fetch, mark and listen; WAL stream, main and sweep;
leadership) is opened by `connect` with the same options: an ``application_name`` that
says which part of the relay it is, a ``connect_timeout``, and TCP keepalives on both
ends, so a peer that went silent is declared dead in about 11 s instead of the kernel's
two hours. `Connection` re-opens itself on the next call after it broke.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from typing import Any, Final

import psycopg
from psycopg import sql

from relay.errors import DatabaseError, PermanentDatabaseError, first_line

APPLICATION_NAME: Final = "outbox-relay"
CONNECT_TIMEOUT_S: Final = 10
#: libpq keepalives: a silent server is declared dead after ~11 s (5 + 3 x 2).
KEEPALIVES: Final = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}
#: The same on the server's side of the socket, so a vanished relay's session (and
#: whatever it holds) ends as quickly.
SERVER_KEEPALIVES: Final = (
    sql.SQL("SET tcp_keepalives_idle = 5"),
    sql.SQL("SET tcp_keepalives_interval = 2"),
    sql.SQL("SET tcp_keepalives_count = 3"),
)

Row = tuple[Any, ...]


#: SQLSTATEs of refusals that retrying alone does not cure, and what each means.
PERMANENT_SQLSTATES: Final = {
    "28P01": "authentication failed",
    "28000": "authorization failed",
    "3D000": "database does not exist",
    "42501": "permission denied",
}
#: libpq reports a refused connection without a SQLSTATE (there is no result, only the
#: server's FATAL text): these are PostgreSQL's English messages for the same refusals.
_PERMANENT_MESSAGES: Final = (
    (re.compile(r"password authentication failed|no password supplied|authentication failed"),
     "authentication failed"),
    (re.compile(r'database "[^"]*" does not exist'), "database does not exist"),
    (re.compile(r'role "[^"]*" does not exist'), "role does not exist"),
    (re.compile(r"no pg_hba\.conf entry"), "not allowed by pg_hba.conf"),
    (re.compile(r"is not permitted to log in"), "role may not log in"),
    (re.compile(r"permission denied for database"), "no CONNECT privilege on the database"),
)  # fmt: skip
_FIXES: Final = {
    "authentication failed": "check the user and password in --database-url",
    "database does not exist": "check the database name in --database-url, or create it",
    "role does not exist": "check the user in --database-url, or create the role",
    "not allowed by pg_hba.conf": "add a pg_hba.conf entry for this host, user and database",
    "role may not log in": "ALTER ROLE ... LOGIN",
    "no CONNECT privilege on the database": "GRANT CONNECT ON DATABASE ... TO the role",
}


def permanent_reason(exc: psycopg.Error) -> str | None:
    """What is wrong when `exc` is a refusal retrying will not cure, else None."""
    if exc.sqlstate in PERMANENT_SQLSTATES:
        return PERMANENT_SQLSTATES[exc.sqlstate]
    text = str(exc)
    for pattern, reason in _PERMANENT_MESSAGES:
        if pattern.search(text):
            return reason
    return None


def translate(exc: psycopg.Error, what: str) -> DatabaseError:
    """Our `DatabaseError` for `exc`, its message starting with `what`."""
    return DatabaseError(f"{what}: {first_line(exc)}")


def connect_error(exc: psycopg.Error, what: str = "cannot connect to PostgreSQL") -> DatabaseError:
    """`translate` for a failed connection attempt.

    A refusal retrying will not cure is a `PermanentDatabaseError` naming what it is.
    """
    reason = permanent_reason(exc)
    if reason is not None:
        fix = _FIXES.get(reason, "")
        return PermanentDatabaseError(
            f"{what}: {reason}: {_server_part(first_line(exc))}" + (f" ({fix})" if fix else ""),
            reason,
        )
    return DatabaseError(f"{what}: {first_line(exc)}")


def _server_part(line: str) -> str:
    # libpq prefixes the server's words with where it connected: keep only the words.
    return re.sub(r"^.*FATAL:\s+", "", line)


def options(purpose: str | None = None) -> dict[str, Any]:
    """The libpq options of every daemon connection; `purpose` names it on the server."""
    name = APPLICATION_NAME if purpose is None else f"{APPLICATION_NAME} {purpose}"
    return {"application_name": name, "connect_timeout": CONNECT_TIMEOUT_S, **KEEPALIVES}


async def connect(
    conninfo: str,
    purpose: str | None = None,
    *,
    session: Sequence[sql.SQL | sql.Composed] = (),
) -> psycopg.AsyncConnection[Any]:
    """An autocommit connection with `options`; `DatabaseError` when it fails.

    `session` statements run first, after the server-side keepalives.
    """
    try:
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True, **options(purpose))
    except psycopg.Error as exc:
        raise connect_error(exc) from None
    try:
        for statement in (*SERVER_KEEPALIVES, *session):
            await conn.execute(statement)
    except psycopg.Error as exc:
        await conn.close()
        raise translate(exc, "cannot set up the PostgreSQL session") from None
    except BaseException:
        # Cancelled while setting up: the caller never sees the connection.
        await conn.close()
        raise
    return conn


class Connection:
    """One connection used by one task at a time, re-opened after it broke."""

    def __init__(
        self, conninfo: str, purpose: str, session: Sequence[sql.SQL | sql.Composed] = ()
    ) -> None:
        self._conninfo = conninfo
        self._purpose = purpose
        #: How the errors of this connection's queries (not of connecting) begin.
        self.failure_prefix = f"{purpose} failed"
        self._session = tuple(session)
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    async def _get(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await connect(self._conninfo, self._purpose, session=self._session)
        return self._conn

    async def execute(self, query: sql.SQL | sql.Composed, params: dict[str, Any]) -> list[Row]:
        """Run `query`; its rows (empty for statements without)."""
        async with self._lock:
            conn = await self._get()
            try:
                cursor = await conn.execute(query, params)
                return await cursor.fetchall() if cursor.description else []
            except asyncio.CancelledError:
                # A query cut short leaves the connection in an unknown state.
                await self.close()
                raise
            except psycopg.Error as exc:
                if conn.broken or isinstance(exc, psycopg.OperationalError):
                    await self.close()
                raise translate(exc, self.failure_prefix) from None

    async def close(self) -> None:
        """Close the connection; the next `execute` opens a new one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
