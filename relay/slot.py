"""The replication slot and the publication of WAL mode: checks, creation, status, drop.

The relay creates what is missing (the publication, the slot) and refuses, with one
line, what it cannot fix: ``wal_level`` not ``logical``, a role without the replication
privilege, a publication that does not carry the outbox's inserts, a slot of another
plugin or database. It never drops a slot on its own: `drop_slot` runs only when an
operator asks (``outbox-relay slot drop``).

`SlotStatus` is the one view of the slot: `slot_status` (sync) is what ``outbox-relay
status``, ``doctor`` and ``slot status`` read, `fetch_slot_status` (async) what the
relay's lag metrics read. ``max_slot_wal_keep_size`` is a server setting, not a slot
property, so it has its own query (`max_slot_wal_keep_size`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from relay.config import Settings
from relay.errors import ConfigError, DatabaseError, first_line
from relay.pgoutput import format_lsn, parse_lsn
from relay.sql import identifiers, query

#: ``wal_status`` of a slot whose WAL is gone: it can never stream again.
LOST: Final = "lost"
_UNDEFINED_OBJECT: Final = "42704"


class WalSetupError(ConfigError):
    """The database is not set up for WAL mode, and the relay cannot fix it itself."""


@dataclasses.dataclass(frozen=True, slots=True)
class SlotStatus:
    """One replication slot as ``pg_replication_slots`` shows it, with its lag."""

    slot_name: str
    plugin: str | None
    database: str | None
    in_this_database: bool
    active: bool
    active_pid: int | None
    #: reserved, extended, unreserved or lost (None for a slot that never reserved WAL).
    wal_status: str | None
    #: WAL the slot may still retain before ``max_slot_wal_keep_size`` invalidates it
    #: (None when that is unlimited).
    safe_wal_size: int | None
    restart_lsn: int | None
    confirmed_flush_lsn: int | None
    #: WAL the server keeps for this slot: from restart_lsn to the current position.
    retained_bytes: int | None
    #: WAL written since the position the relay last confirmed.
    unconfirmed_bytes: int | None
    #: The walsender's state while a relay streams (pg_stat_replication), else None.
    sender_state: str | None
    #: The walsender's flush lag while a relay streams (pg_stat_replication), else None.
    flush_lag_seconds: float | None

    @property
    def lost(self) -> bool:
        """True when the slot's WAL was removed: it cannot stream any more."""
        return self.wal_status == LOST

    def as_json(self) -> dict[str, Any]:
        """Plain JSON values, positions as PostgreSQL writes them (``0/16B3748``)."""
        values = dataclasses.asdict(self)
        for name in ("restart_lsn", "confirmed_flush_lsn"):
            values[name] = format_lsn(values[name]) if values[name] is not None else None
        return values


def slot_json(slot_name: str, status: SlotStatus | None) -> dict[str, Any]:
    """The slot as JSON values, with ``exists``; the same keys when it does not exist."""
    if status is None:
        values = dict.fromkeys(field.name for field in dataclasses.fields(SlotStatus))
        values |= {"slot_name": slot_name, "active": False}
    else:
        values = status.as_json()
    return {"slot_name": slot_name, "exists": status is not None} | values


def names(settings: Settings) -> dict[str, sql.Composable]:
    """The SQL placeholders for the outbox and publication of `settings`."""
    return identifiers(settings.schema, settings.table, publication=settings.publication)


def _lsn(text: object) -> int | None:
    return parse_lsn(str(text)) if text is not None else None


def _status(row: dict[str, Any] | None) -> SlotStatus | None:
    if row is None:
        return None
    return SlotStatus(
        slot_name=row["slot_name"],
        plugin=row["plugin"],
        database=row["database"],
        in_this_database=bool(row["in_this_database"]),
        active=bool(row["active"]),
        active_pid=row["active_pid"],
        wal_status=row["wal_status"],
        safe_wal_size=row["safe_wal_size"],
        restart_lsn=_lsn(row["restart_lsn"]),
        confirmed_flush_lsn=_lsn(row["confirmed_flush_lsn"]),
        retained_bytes=row["retained_bytes"],
        unconfirmed_bytes=row["unconfirmed_bytes"],
        sender_state=row["sender_state"],
        flush_lag_seconds=row["flush_lag_seconds"],
    )


def slot_status(conn: psycopg.Connection[Any], slot_name: str) -> SlotStatus | None:
    """The slot `slot_name`, or None when it does not exist (sync, for the CLI)."""
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(query("wal", "slot_status", {}), {"slot_name": slot_name})
        return _status(cursor.fetchone())


def max_slot_wal_keep_size(conn: psycopg.Connection[Any]) -> int:
    """The server's ``max_slot_wal_keep_size`` in bytes, -1 for unlimited."""
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(query("wal", "max_slot_wal_keep_size", {}))
        row = cursor.fetchone()
    return int(row["bytes"]) if row else -1


async def fetch_slot_status(
    conn: psycopg.AsyncConnection[Any], slot_name: str
) -> SlotStatus | None:
    """The slot `slot_name`, or None when it does not exist."""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(query("wal", "slot_status", {}), {"slot_name": slot_name})
        return _status(await cursor.fetchone())


def drop_slot(conn: psycopg.Connection[Any], slot_name: str) -> bool:
    """Drop the slot; False when it did not exist. The server forgets its position.

    Raises:
        DatabaseError: the slot is in use by a running relay, or the role may not drop it.

    """
    try:
        conn.execute(query("wal", "drop_slot", {}), {"slot_name": slot_name})
    except psycopg.Error as exc:
        if exc.sqlstate == _UNDEFINED_OBJECT:
            return False
        raise DatabaseError(f"cannot drop slot {slot_name}: {first_line(exc)}") from None
    return True


async def check_and_prepare(conn: psycopg.AsyncConnection[Any], settings: Settings) -> None:
    """Check the server for WAL mode; create the publication when it is missing.

    Raises:
        WalSetupError: one line saying what is wrong and how to fix it.

    """
    sql_names = names(settings)
    outbox = f"{settings.schema}.{settings.table}"
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            query("wal", "server_settings", sql_names),
            {"schema": settings.schema, "table": settings.table},
        )
        server = await cursor.fetchone()
        assert server is not None  # noqa: S101 - a SELECT without FROM returns one row
        if server["wal_level"] != "logical":
            raise WalSetupError(
                f"wal mode needs wal_level = logical, the server has {server['wal_level']}; "
                "set it in postgresql.conf and restart PostgreSQL"
            )
        if not server["can_replicate"]:
            raise WalSetupError(
                f"role {server['role']} may not stream the WAL: "
                f"ALTER ROLE {server['role']} REPLICATION (or use --mode poll)"
            )
        if not server["outbox_exists"]:
            raise WalSetupError(f"table {outbox} does not exist: run outbox-relay migrate")
        params = {
            "publication": settings.publication,
            "schema": settings.schema,
            "table": settings.table,
        }
        await cursor.execute(query("wal", "publication", sql_names), params)
        publication = await cursor.fetchone()
    if publication is None:
        try:
            await conn.execute(query("wal", "create_publication", sql_names))
        except psycopg.Error as exc:
            raise WalSetupError(
                f"publication {settings.publication} does not exist and cannot be created: "
                f"{first_line(exc)}"
            ) from None
        return
    if not publication["covers_outbox"]:
        raise WalSetupError(
            f"publication {settings.publication} does not include {outbox}: if it is "
            "another outbox's, set --publication and --slot-name to this outbox's own, "
            f"else ALTER PUBLICATION {settings.publication} ADD TABLE {outbox}"
        )
    if not publication["pubinsert"]:
        raise WalSetupError(
            f"publication {settings.publication} does not publish inserts: "
            f"ALTER PUBLICATION {settings.publication} SET (publish = 'insert')"
        )


def check_slot(status: SlotStatus) -> None:
    """Refuse a slot the relay cannot use: another plugin or another database.

    Raises:
        WalSetupError: the slot belongs to something else.

    """
    if status.plugin != "pgoutput":
        raise WalSetupError(
            f"slot {status.slot_name} uses plugin {status.plugin}, not pgoutput: "
            "choose another --slot-name"
        )
    if not status.in_this_database:
        raise WalSetupError(
            f"slot {status.slot_name} belongs to database {status.database}: "
            "choose another --slot-name"
        )
