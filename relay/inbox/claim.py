"""`Inbox.claim`: record an event id in the caller's transaction, exactly once.

The claim is an ``INSERT ... ON CONFLICT DO NOTHING`` on the primary key (consumer,
event_id): the first transaction to insert the id wins; a second one, concurrent or
later, waits for the first to end and gets False if it committed (True if it rolled
back, which released the claim). Nothing here commits: the claim becomes permanent
exactly when the business changes of the same transaction do.

Works with the connections of `relay.producer`: SQLAlchemy `Session` / `Connection`,
psycopg `Connection` (sync), and SQLAlchemy `AsyncSession` / `AsyncConnection`,
psycopg `AsyncConnection` (the ``*_async`` methods).
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Final

import psycopg
import sqlalchemy
from psycopg import sql
from sqlalchemy.orm import Session, scoped_session

from relay import config
from relay import sql as relay_sql
from relay.errors import ConfigError, MissingEventIdError
from relay.inbox import names
from relay.producer import AsyncConnection, SyncConnection, _is_sqlalchemy_async

#: The header the relay puts on every record it publishes.
EVENT_ID_HEADER: Final = "event_id"
_COLUMNS: Final = ("consumer", "event_ids", "topics", "partitions", "offsets")


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    """One event id to claim, with where the record came from (kept for operators)."""

    event_id: uuid.UUID
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None


def event_id_of(headers: Iterable[tuple[str, bytes | None]]) -> uuid.UUID:
    """The ``event_id`` header of a Kafka record; `MissingEventIdError` if absent or bad."""
    for name, value in headers:
        if name == EVENT_ID_HEADER:
            try:
                return uuid.UUID((value or b"").decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                raise MissingEventIdError(
                    f"the record's event_id header {value!r} is not a UUID"
                ) from None
    raise MissingEventIdError(
        "the record has no event_id header: the inbox can only drop duplicates of records "
        "that carry one (every record outbox-relay publishes does)"
    )


def _as_claim(item: Claim | uuid.UUID | str) -> Claim:
    if isinstance(item, Claim):
        return item
    if isinstance(item, uuid.UUID):
        return Claim(item)
    if isinstance(item, str):
        try:
            return Claim(uuid.UUID(item))
        except ValueError:
            raise MissingEventIdError(f"event id {item!r} is not a UUID") from None
    raise MissingEventIdError(
        f"an event id is a uuid.UUID, a UUID string or a Claim, not {type(item).__name__}"
    )


@functools.cache
def _statements(schema: str, table: str) -> tuple[sql.Composed, sqlalchemy.TextClause]:
    base = names.identifiers(schema, table)
    for_psycopg = relay_sql.query(
        "inbox", "claim_many", base | {c: sql.Placeholder(c) for c in _COLUMNS}
    )
    for_sqlalchemy = relay_sql.query(
        "inbox", "claim_many", base | {c: sql.SQL(f":{c}") for c in _COLUMNS}
    )
    return for_psycopg, sqlalchemy.text(for_sqlalchemy.as_string())


@dataclasses.dataclass(frozen=True, slots=True)
class Inbox:
    """The processed-events table ``schema.table`` as seen by one consumer."""

    consumer: str
    _: dataclasses.KW_ONLY
    schema: str = "public"
    table: str = "inbox"

    def __post_init__(self) -> None:
        if not isinstance(self.consumer, str) or not self.consumer.strip():
            raise ConfigError("the inbox consumer name must be a non-empty str")
        if "\x00" in self.consumer:
            raise ConfigError("the inbox consumer name contains a NUL character")
        for name in ("schema", "table"):
            try:
                config.OPTIONS_BY_NAME[name].parse(getattr(self, name))
            except ValueError as exc:
                raise ConfigError(f"invalid inbox {name}: {exc}") from None

    def _params(self, claims: Sequence[Claim]) -> dict[str, Any]:
        return {
            "consumer": self.consumer,
            "event_ids": [str(c.event_id) for c in claims],
            "topics": [c.topic for c in claims],
            "partitions": [c.partition for c in claims],
            "offsets": [c.offset for c in claims],
        }

    @staticmethod
    def _outcome(claims: Sequence[Claim], won: set[uuid.UUID]) -> list[bool]:
        # An id given twice in one batch is new only at its first place.
        outcome = []
        for claim in claims:
            outcome.append(claim.event_id in won)
            won.discard(claim.event_id)
        return outcome

    def claim(self, conn: SyncConnection, event_id: Claim | uuid.UUID | str) -> bool:
        """Claim one id in `conn`'s transaction: True the first time, False for a duplicate."""
        return self.claim_many(conn, [event_id])[0]

    def claim_many(
        self, conn: SyncConnection, event_ids: Iterable[Claim | uuid.UUID | str]
    ) -> list[bool]:
        """Claim many ids in one round trip; True where the id is new, in input order."""
        claims = [_as_claim(item) for item in event_ids]
        if not claims:
            return []
        psycopg_statement, sqlalchemy_statement = _statements(self.schema, self.table)
        params = self._params(claims)
        if isinstance(conn, psycopg.Connection):
            rows = conn.execute(psycopg_statement, params).fetchall()
        elif isinstance(conn, Session | scoped_session | sqlalchemy.Connection):
            rows = list(conn.execute(sqlalchemy_statement, params))
        else:
            raise TypeError(
                "claim takes a SQLAlchemy Session or Connection or a psycopg Connection, "
                f"not {type(conn).__name__} (use claim_async for async connections)"
            )
        return self._outcome(claims, {_uuid(row[0]) for row in rows})

    async def claim_async(self, conn: AsyncConnection, event_id: Claim | uuid.UUID | str) -> bool:
        """Claim one id in `conn`'s transaction: True the first time, False for a duplicate."""
        return (await self.claim_many_async(conn, [event_id]))[0]

    async def claim_many_async(
        self, conn: AsyncConnection, event_ids: Iterable[Claim | uuid.UUID | str]
    ) -> list[bool]:
        """Claim many ids in one round trip; True where the id is new, in input order."""
        claims = [_as_claim(item) for item in event_ids]
        if not claims:
            return []
        psycopg_statement, sqlalchemy_statement = _statements(self.schema, self.table)
        params = self._params(claims)
        if isinstance(conn, psycopg.AsyncConnection):
            cursor = await conn.execute(psycopg_statement, params)
            rows = await cursor.fetchall()
        elif _is_sqlalchemy_async(conn):
            rows = list(await conn.execute(sqlalchemy_statement, params))
        else:
            raise TypeError(
                "claim_async takes a SQLAlchemy AsyncSession or AsyncConnection or a psycopg "
                f"AsyncConnection, not {type(conn).__name__} (use claim for sync connections)"
            )
        return self._outcome(claims, {_uuid(row[0]) for row in rows})


def _uuid(value: object) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
