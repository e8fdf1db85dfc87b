"""A ``replication=database`` connection: replication commands, then one COPY BOTH stream.

psycopg 3 has no replication API (psycopg issue #71), but its `psycopg.pq` layer exposes
libpq's COPY calls. Replication commands (``IDENTIFY_SYSTEM``, ``CREATE_REPLICATION_SLOT``)
run through an ordinary `psycopg.AsyncConnection` opened with ``replication=database``;
``START_REPLICATION`` switches the connection to COPY BOTH, after which only `pgconn` is
used: `read_frames` drains every CopyData frame libpq holds (one wake-up, many frames:
Python's per-message overhead is what limits the stream), `send` queues a standby status
update. This module moves bytes only; decoding them is `relay.pgoutput`'s job.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Final, Self

import psycopg
import structlog
from psycopg import pq, sql
from psycopg.pq.abc import PGconn, PGresult

from relay import connection
from relay.errors import DatabaseError, first_line
from relay.pgoutput import format_lsn, parse_lsn

log = structlog.get_logger(__name__)

#: Most frames drained per `read_frames` call, so one busy stream cannot starve the loop.
MAX_FRAMES_PER_READ: Final = 20_000

_COPY_BOTH: Final = pq.ExecStatus.COPY_BOTH
_COMMAND_OK: Final = pq.ExecStatus.COMMAND_OK
_TUPLES_OK: Final = pq.ExecStatus.TUPLES_OK


class ReplicationError(DatabaseError):
    """The replication connection failed, or the server ended the stream.

    `sqlstate` is the server's error code when it sent one (e.g. ``42704`` when the slot
    does not exist, ``57P01`` when an administrator terminated the walsender).
    """

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@dataclasses.dataclass(frozen=True, slots=True)
class CreatedSlot:
    """What ``CREATE_REPLICATION_SLOT`` returned."""

    slot_name: str
    #: The first position the slot decodes from: every transaction that commits later
    #: is streamed, every earlier one is visible in the exported snapshot.
    consistent_point: int
    #: Valid until the next command on the replication connection; None without export.
    snapshot_name: str | None


def start_replication_command(
    slot_name: str, publication: str, start_lsn: int, *, messages: bool
) -> sql.Composed:
    """The ``START_REPLICATION`` command for pgoutput protocol version 1."""
    # publication_names is a string the server splits as a list of identifiers: quote
    # the name inside it so its case survives, as CREATE PUBLICATION kept it.
    quoted_publication = '"' + publication.replace('"', '""') + '"'
    return sql.SQL(
        "START_REPLICATION SLOT {slot} LOGICAL {lsn} "
        "(proto_version '1', publication_names {publications}, messages {messages})"
    ).format(
        slot=sql.Identifier(slot_name),
        lsn=sql.SQL(format_lsn(start_lsn)),
        publications=sql.Literal(quoted_publication),
        messages=sql.Literal("true" if messages else "false"),
    )


class ReplicationConnection:
    """One replication connection, used for commands first and for one stream after."""

    def __init__(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        self._conn = conn
        self.pgconn = conn.pgconn
        self._readable = asyncio.Event()
        self._watched_fd: int | None = None
        self.streaming = False

    @classmethod
    async def connect(cls, conninfo: str, *, purpose: str = "wal stream") -> Self:
        """Open a ``replication=database`` connection to the database of `conninfo`."""
        try:
            conn = await psycopg.AsyncConnection.connect(
                conninfo, replication="database", autocommit=True, **connection.options(purpose)
            )
        except psycopg.Error as exc:
            raise ReplicationError(
                f"cannot open a replication connection: {first_line(exc)}",
                getattr(exc, "sqlstate", None),
            ) from None
        return cls(conn)

    async def command(self, command: sql.Composed | sql.SQL) -> list[tuple[object, ...]]:
        """Run one replication command (simple protocol) and return its rows."""
        try:
            cursor = await self._conn.execute(command)
            return await cursor.fetchall() if cursor.description else []
        except psycopg.Error as exc:
            raise ReplicationError(first_line(exc), exc.sqlstate) from None

    async def create_slot(self, slot_name: str, *, export_snapshot: bool) -> CreatedSlot:
        """Create a pgoutput slot; with `export_snapshot`, also export its snapshot.

        The snapshot stays importable (``SET TRANSACTION SNAPSHOT``) only until the next
        command on this connection, e.g. `start`.
        """
        rows = await self.command(
            sql.SQL("CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput {snapshot}").format(
                slot=sql.Identifier(slot_name),
                snapshot=sql.SQL("EXPORT_SNAPSHOT" if export_snapshot else "NOEXPORT_SNAPSHOT"),
            )
        )
        name, consistent_point, snapshot_name, _plugin = rows[0]
        return CreatedSlot(
            str(name),
            parse_lsn(str(consistent_point)),
            str(snapshot_name) if snapshot_name else None,
        )

    async def start(
        self, slot_name: str, publication: str, start_lsn: int, *, messages: bool
    ) -> None:
        """Send ``START_REPLICATION`` and wait until the server streams (COPY BOTH)."""
        command = start_replication_command(slot_name, publication, start_lsn, messages=messages)
        pgconn = self.pgconn
        try:
            pgconn.send_query(command.as_bytes(self._conn))
            while pgconn.flush():
                await self._wait_readable(1.0)
            while True:
                pgconn.consume_input()
                if not pgconn.is_busy():
                    break
                await self._wait_readable(None)
        except psycopg.Error as exc:
            raise ReplicationError(first_line(exc)) from None
        result = pgconn.get_result()
        if result is None or result.status != _COPY_BOTH:
            raise _result_error(result, pgconn, "START_REPLICATION failed")
        self.streaming = True

    def read_frames(self, into: list[bytes], limit: int = MAX_FRAMES_PER_READ) -> bool:
        """Append to `into` every frame libpq can hand out without waiting.

        Returns False when nothing was available (then await `wait_readable`).

        Raises:
            ReplicationError: the server ended the stream or the connection broke.

        """
        get_copy_data = self.pgconn.get_copy_data
        append = into.append
        got = 0
        consumed = False
        try:
            while got < limit:
                nbytes, data = get_copy_data(1)
                if nbytes > 0:
                    append(data.tobytes())
                    got += 1
                    continue
                if nbytes == 0:
                    if consumed:
                        break
                    # libpq only parses what it already read: pull what the socket
                    # holds once before telling the caller to wait.
                    self.pgconn.consume_input()
                    consumed = True
                    continue
                self._end_of_stream()
        except psycopg.Error as exc:
            self.streaming = False
            self.unwatch()
            raise ReplicationError(f"replication stream broke: {first_line(exc)}") from None
        return got > 0

    def _end_of_stream(self) -> None:
        # -1: the server ended COPY; the reason comes as the next result.
        self.streaming = False
        self.unwatch()
        result = self.pgconn.get_result()
        raise _result_error(result, self.pgconn, "the server ended the replication stream")

    async def wait_readable(self, timeout_s: float | None) -> None:
        """Wait until the socket has data, or `timeout_s` passed."""
        await self._wait_readable(timeout_s)

    async def _wait_readable(self, timeout_s: float | None) -> None:
        # The socket is watched only while we wait. Watched all the time, a socket with
        # data the reader does not want yet (its queue is full, a sweep goes first) made
        # every turn of the event loop return from epoll at once and run the callback:
        # the loop spun, burning the CPU PostgreSQL and the broker needed.
        # The descriptor number is kept while watched: after a lost connection libpq
        # closes the socket and PQsocket says -1, but the event loop watches the number.
        try:
            self._watched_fd = self.pgconn.socket
        except psycopg.Error as exc:
            raise ReplicationError(f"replication stream broke: {first_line(exc)}") from None
        self._readable.clear()
        asyncio.get_running_loop().add_reader(self._watched_fd, self._readable.set)
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
        # cancellation that arrives as the event fires, and the reader then never ends.
        try:
            async with asyncio.timeout(timeout_s):
                await self._readable.wait()
        except TimeoutError:
            return
        finally:
            self.unwatch()

    def send(self, message: bytes) -> None:
        """Queue a CopyData message (a standby status update) and push it out."""
        try:
            self.pgconn.put_copy_data(message)
            # Nonblocking: what does not fit in the socket now goes with the next flush.
            self.pgconn.flush()
        except psycopg.Error as exc:
            raise ReplicationError(f"replication stream broke: {first_line(exc)}") from None

    async def close(self) -> None:
        """Close the connection (the server keeps the slot and its confirmed position)."""
        self.unwatch()
        self.streaming = False
        await self._conn.close()

    def unwatch(self) -> None:
        """Stop watching the socket; call before the connection is replaced."""
        fd, self._watched_fd = self._watched_fd, None
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _result_error(result: PGresult | None, pgconn: PGconn, what: str) -> ReplicationError:
    if result is not None and result.status not in {_COMMAND_OK, _TUPLES_OK, _COPY_BOTH}:
        message = (result.error_message or pgconn.error_message).decode(errors="replace")
        sqlstate = result.error_field(pq.DiagnosticField.SQLSTATE)
        return ReplicationError(
            f"{what}: {first_line(Exception(message)) if message.strip() else 'no reason given'}",
            sqlstate.decode() if sqlstate else None,
        )
    message = pgconn.error_message.decode(errors="replace")
    return ReplicationError(
        f"{what}: {first_line(Exception(message)) if message.strip() else 'connection closed'}"
    )
