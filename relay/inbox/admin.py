"""The inbox's operator queries: status per consumer, purge of old processed ids."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Final

import psycopg
from psycopg import sql

from relay import sql as relay_sql
from relay.errors import ConfigError, DatabaseError, first_line
from relay.inbox import names

#: Processed ids deleted per purge transaction: short, so a running consumer never waits.
PURGE_BATCH_SIZE: Final = 5000


@dataclasses.dataclass(frozen=True, slots=True)
class ConsumerStatus:
    """What `inbox status` shows for one consumer."""

    consumer: str
    processed_last_minute: int
    processed_last_hour: int
    parked: int
    oldest_parked_at: dt.datetime | None

    def as_json(self) -> dict[str, object]:
        """The row as JSON values."""
        return dataclasses.asdict(self) | {
            "oldest_parked_at": self.oldest_parked_at.isoformat() if self.oldest_parked_at else None
        }


def _translate(exc: psycopg.Error) -> DatabaseError:
    if isinstance(exc, psycopg.OperationalError):
        return DatabaseError(f"cannot connect to the database: {first_line(exc)}")
    return DatabaseError(f"inbox query failed: {first_line(exc)}")


def status(conninfo: str, schema: str, table: str) -> list[ConsumerStatus]:
    """Processed and parked counts of every consumer of the inbox ``schema.table``."""
    query = relay_sql.query("inbox", "status", names.identifiers(schema, table))
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
            rows = conn.execute(query).fetchall()
    except psycopg.Error as exc:
        raise _translate(exc) from None
    return [ConsumerStatus(*row) for row in rows]


def purge(
    conninfo: str,
    schema: str,
    table: str,
    *,
    older_than: dt.timedelta,
    batch_size: int = PURGE_BATCH_SIZE,
) -> int:
    """Delete processed ids older than `older_than`, one short transaction per batch.

    Rows locked by a consumer's open transaction are skipped, never waited for. Only
    ids older than the broker's retention should be purged: a record redelivered after
    its id was purged is applied again.
    """
    cutoff = dt.datetime.now(dt.UTC) - older_than
    query = relay_sql.query(
        "inbox",
        "purge_batch",
        names.identifiers(schema, table)
        | {"cutoff": sql.Literal(cutoff), "batch_size": sql.Literal(batch_size)},
    )
    deleted = 0
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
            while True:
                count = conn.execute(query).rowcount
                deleted += count
                if count < batch_size:
                    return deleted
    except psycopg.Error as exc:
        raise _translate(exc) from None


def grants(schema: str, table: str, roles: Sequence[str]) -> list[sql.Composed]:
    """The grants of the consumers' `roles` on the inbox ``schema.table``."""
    for role in roles:
        if not role or "\x00" in role:
            raise ConfigError(f"invalid role name {role!r}")
    placeholders = names.identifiers(schema, table)
    return [
        relay_sql.query("inbox", "consumer_role", placeholders | {"role": sql.Identifier(role)})
        for role in roles
    ]


def apply_grants(conninfo: str, blocks: Sequence[sql.Composed]) -> None:
    """Run the grants in one transaction."""
    try:
        with psycopg.connect(conninfo, connect_timeout=10) as conn:
            for block in blocks:
                conn.execute(block)
    except psycopg.Error as exc:
        raise _translate(exc) from None


def release(
    conninfo: str,
    schema: str,
    table: str,
    *,
    consumer: str,
    new_state: str,
    keys: Sequence[str] = (),
    event_ids: Sequence[uuid.UUID] = (),
    everything: bool = False,
) -> int:
    """Move parked records of `consumer` to ``retry`` or ``skipped``; the number moved.

    The runner applies retried records in their key's order; skipped ones never.
    """
    query = relay_sql.query("inbox", "release", names.identifiers(schema, table))
    try:
        with psycopg.connect(conninfo, connect_timeout=10) as conn:
            return conn.execute(
                query,
                {
                    "consumer": consumer,
                    "new_state": new_state,
                    "all": everything,
                    "keys": [k.encode() for k in keys],
                    "event_ids": list(event_ids),
                },
            ).rowcount
    except psycopg.Error as exc:
        raise _translate(exc) from None
