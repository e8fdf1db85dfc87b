"""Write events into the outbox, inside the caller's own transaction.

The service opens a transaction, writes its business rows, adds events, and commits: the
events become visible to the relay exactly when the business rows do, and a rollback
takes both away. Nothing here ever commits.

    from relay.producer import Event, publish

    with Session(engine) as session, session.begin():
        session.add(order)
        publish(session, Event("orders", {"id": order.id, "total": 42}, key=str(order.id)))

One call with many events is one statement and one round trip (`publish_many`). Every
event is checked before anything is sent to the database, with Kafka's own rules, and a
bad one raises `InvalidEventError` naming what is wrong; the table's CHECK constraints
are the last guard, for writers that bypass this module.

Works with a SQLAlchemy `Session` or `Connection`, a psycopg `Connection` (sync), and a
SQLAlchemy `AsyncSession` or `AsyncConnection`, a psycopg `AsyncConnection` (async, with
the ``*_async`` functions); scoped sessions (Flask-SQLAlchemy's ``db.session``) too. Use
an `Outbox` for an outbox that is not ``public.outbox``. A psycopg connection in
autocommit mode has no transaction to join: wrap the business writes and the events in
``with conn.transaction():``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import psycopg
import sqlalchemy
from psycopg import sql
from sqlalchemy.orm import Session, scoped_session

from relay import config
from relay import sql as relay_sql
from relay.errors import ConfigError, InvalidEventError

if TYPE_CHECKING:
    # SQLAlchemy's asyncio module needs greenlet, which only its async users install.
    from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
    from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session

#: A value JSON can hold. Mappings and sequences are written as JSON objects and arrays.
JsonValue: TypeAlias = (
    Mapping[str, "JsonValue"] | Sequence["JsonValue"] | str | int | float | bool | None
)
#: A JSON value, or bytes (Avro, Protobuf, ...) sent to Kafka exactly as they are.
#: ``None`` writes a record without a value: a tombstone on a compacted topic.
Payload: TypeAlias = JsonValue | bytes

#: Kafka's limit on the length of a topic name.
TOPIC_MAX_CHARS: Final = 249
_TOPIC: Final = re.compile(r"[a-zA-Z0-9._-]+")
#: The relay adds this header to every record; an event cannot set it.
RESERVED_HEADERS: Final = frozenset({"event_id"})
#: Deeper payloads are refused: no event needs more, and a payload that contains itself
#: must fail with a clear error, not a RecursionError.
MAX_JSON_DEPTH: Final = 100
#: Limits on what an event carries besides its payload, the same as the CHECKs of
#: migrations/0002_event_limits.sql (which says why these values).
MAX_KEY_BYTES: Final = 1024
MAX_HEADERS: Final = 64
#: Measured as jsonb's text form of the headers object, like the CHECK.
MAX_HEADERS_BYTES: Final = 65536
#: The default limit of `Outbox`, the same as ``outbox-relay migrate`` puts in the CHECK.
DEFAULT_MAX_PAYLOAD_BYTES: Final = config.Settings().max_payload_bytes

SyncConnection: TypeAlias = (
    Session | scoped_session[Any] | sqlalchemy.Connection | psycopg.Connection[Any]
)
AsyncConnection: TypeAlias = (
    "AsyncSession | async_scoped_session[Any] | SAAsyncConnection | psycopg.AsyncConnection[Any]"
)


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One event to write to the outbox.

    `topic` follows Kafka's rules (letters, digits, ``.``, ``_``, ``-``; 1 to 249
    characters; not ``.`` or ``..``). `key` is the partition key, e.g. the aggregate id:
    events of one key reach one partition, in the order they were written. `payload` is
    a JSON value, written compactly, or bytes. `headers` become Kafka record headers.
    At most `MAX_HEADERS` headers of `MAX_HEADERS_BYTES` in all (as JSON), and a key of
    at most `MAX_KEY_BYTES` (UTF-8). `event_type` and `aggregate_type` travel as headers
    too, and can route events (see ``--topic-template``). `event_id` defaults to a random
    UUID; set it to make a retried business operation write the same event (the outbox
    keeps event ids unique).

    Everything but the payload is checked here; the payload is checked when the event
    is written, against the outbox's size limit.
    """

    topic: str
    payload: Payload
    _: dataclasses.KW_ONLY
    key: str | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    event_type: str | None = None
    aggregate_type: str | None = None
    event_id: uuid.UUID | None = None

    def __post_init__(self) -> None:
        check_topic(self.topic)
        _check_optional_text("key", self.key)
        if self.key is not None and len(self.key.encode("utf-8")) > MAX_KEY_BYTES:
            raise InvalidEventError(
                f"key {self.key[:40]!r}... is {len(self.key.encode('utf-8'))} bytes long; "
                f"the outbox allows at most {MAX_KEY_BYTES}"
            )
        _check_optional_text("event_type", self.event_type)
        _check_optional_text("aggregate_type", self.aggregate_type)
        check_headers(self.headers)
        if self.event_id is not None and not isinstance(self.event_id, uuid.UUID):
            raise InvalidEventError(
                f"event_id must be a uuid.UUID or None, not {type(self.event_id).__name__}"
            )


def check_topic(topic: object) -> None:
    """Raise `InvalidEventError` unless `topic` is a name Kafka accepts."""
    if not isinstance(topic, str):
        raise InvalidEventError(f"topic must be a str, not {type(topic).__name__}")
    if not topic:
        raise InvalidEventError("topic is empty")
    if len(topic) > TOPIC_MAX_CHARS:
        raise InvalidEventError(
            f"topic {topic[:40]!r}... is {len(topic)} characters long; Kafka allows at most "
            f"{TOPIC_MAX_CHARS}"
        )
    if topic in {".", ".."}:
        raise InvalidEventError(f"topic {topic!r} is not allowed by Kafka")
    if not _TOPIC.fullmatch(topic):
        bad = sorted({c for c in topic if not _TOPIC.fullmatch(c)})
        raise InvalidEventError(
            f"topic {topic!r} contains {', '.join(map(repr, bad))}; "
            "Kafka allows only letters, digits, '.', '_' and '-'"
        )


def _check_text(what: str, value: str) -> None:
    if "\x00" in value:
        raise InvalidEventError(f"{what} contains a NUL character, which PostgreSQL cannot store")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEventError(f"{what} is not valid Unicode (a lone surrogate?)") from None


def _check_optional_text(what: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidEventError(f"{what} must be a str or None, not {type(value).__name__}")
    _check_text(what, value)


def check_headers(headers: object) -> None:
    """Raise `InvalidEventError` unless `headers` maps header names to str values."""
    if not isinstance(headers, Mapping):
        raise InvalidEventError(
            f"headers must be a mapping of str to str, not {type(headers).__name__}"
        )
    for name, value in headers.items():
        if not isinstance(name, str) or not name:
            raise InvalidEventError(f"header name {name!r} must be a non-empty str")
        if name in RESERVED_HEADERS:
            raise InvalidEventError(f"header {name!r} is set by the relay; pass event_id=...")
        if not isinstance(value, str):
            raise InvalidEventError(
                f"header {name!r} must have a str value, not {type(value).__name__}"
            )
        _check_text(f"header {name!r}", name)
        _check_text(f"header {name!r}", value)
    if len(headers) > MAX_HEADERS:
        raise InvalidEventError(
            f"event has {len(headers)} headers; the outbox allows at most {MAX_HEADERS}"
        )
    # The CHECK measures jsonb's own text form, which puts a space after ',' and ':'.
    size = len(json.dumps(dict(headers), ensure_ascii=False).encode("utf-8"))
    if size > MAX_HEADERS_BYTES:
        raise InvalidEventError(
            f"headers are {size} bytes as JSON; the outbox allows at most {MAX_HEADERS_BYTES}"
        )


def _check_json(value: object, path: str, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise InvalidEventError(
            f"payload is nested deeper than {MAX_JSON_DEPTH} levels (or contains itself)"
        )
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidEventError(f"{path} is {value}, which JSON cannot hold")
    elif isinstance(value, str):
        _check_text(path, value)
    elif isinstance(value, Mapping):
        _check_object(value, path, depth)
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        for index, item in enumerate(value):
            _check_json(item, f"{path}[{index}]", depth + 1)
    else:
        raise InvalidEventError(
            f"{path} is a {type(value).__name__}, which JSON cannot hold "
            "(use dict, list, str, int, float, bool or None; bytes only as the whole payload)"
        )


def _check_object(value: Mapping[object, object], path: str, depth: int) -> None:
    for key, item in value.items():
        if not isinstance(key, str):
            raise InvalidEventError(
                f"{path} has the key {key!r} ({type(key).__name__}); JSON keys are strings"
            )
        _check_text(f"{path} key {key!r}", key)
        _check_json(item, f"{path}[{key!r}]", depth + 1)


def _plain(value: object) -> object:
    # json.dumps knows dict, list and tuple; other mappings and sequences passed the check.
    if isinstance(value, Mapping):
        return dict(value)
    return list(value)  # type: ignore[call-overload]


def encode_payload(payload: object, max_payload_bytes: int) -> tuple[str | None, bytes | None]:
    """The ``payload`` (compact JSON text) and ``payload_bytes`` columns for a payload.

    Raises `InvalidEventError` if the payload is not JSON or bytes, or is larger than
    `max_payload_bytes` as the outbox's CHECK measures it.
    """
    if payload is None:
        return None, None
    if isinstance(payload, bytes | bytearray | memoryview):
        data = bytes(payload)
        if len(data) > max_payload_bytes:
            raise InvalidEventError(
                f"payload is {len(data)} bytes, more than the outbox's limit of "
                f"{max_payload_bytes} (max_payload_bytes)"
            )
        return None, data
    _check_json(payload, "payload", 0)
    compact = json.dumps(
        payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_plain
    )
    # The CHECK measures jsonb's own text form, which puts a space after ',' and ':'.
    as_jsonb_text = json.dumps(payload, ensure_ascii=False, allow_nan=False, default=_plain)
    size = len(as_jsonb_text.encode("utf-8"))
    if size > max_payload_bytes:
        raise InvalidEventError(
            f"payload is {size} bytes as JSON, more than the outbox's limit of "
            f"{max_payload_bytes} (max_payload_bytes)"
        )
    return compact, None


@dataclasses.dataclass(frozen=True, slots=True)
class Outbox:
    """Where events are written: the outbox table ``schema.table`` and its payload limit.

    `max_payload_bytes` should be the value ``outbox-relay migrate`` was run with, so
    that an oversize payload is refused here, with a clear error, before the CHECK.
    """

    schema: str = "public"
    table: str = "outbox"
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES

    def __post_init__(self) -> None:
        for name in ("schema", "table"):
            try:
                config.OPTIONS_BY_NAME[name].parse(getattr(self, name))
            except ValueError as exc:
                raise ConfigError(f"invalid outbox {name}: {exc}") from None

    @classmethod
    def from_settings(cls, settings: config.Settings) -> Outbox:
        """The outbox a relay with these settings reads."""
        return cls(settings.schema, settings.table, settings.max_payload_bytes)

    def _rows(self, events: Iterable[Event]) -> tuple[list[uuid.UUID], dict[str, list[Any]]]:
        columns: dict[str, list[Any]] = {name: [] for name in _COLUMNS}
        ids = []
        for event in events:
            if not isinstance(event, Event):
                raise InvalidEventError(f"expected an Event, got {type(event).__name__}")
            payload, payload_bytes = encode_payload(event.payload, self.max_payload_bytes)
            event_id = event.event_id or uuid.uuid4()
            ids.append(event_id)
            columns["event_ids"].append(str(event_id))
            columns["topics"].append(event.topic)
            columns["keys"].append(event.key)
            columns["payloads"].append(payload)
            columns["payloads_bytes"].append(payload_bytes)
            columns["headers"].append(json.dumps(dict(event.headers), separators=(",", ":")))
            columns["event_types"].append(event.event_type)
            columns["aggregate_types"].append(event.aggregate_type)
        return ids, columns

    def publish(self, conn: SyncConnection, event: Event) -> uuid.UUID:
        """Add one event in `conn`'s current transaction; return its event id."""
        return self.publish_many(conn, [event])[0]

    def publish_many(self, conn: SyncConnection, events: Iterable[Event]) -> list[uuid.UUID]:
        """Add events in `conn`'s current transaction, in one round trip; return their ids.

        The events keep the order of `events` in the outbox (and so, per key, in Kafka).
        """
        ids, params = self._rows(events)
        if not ids:
            return ids
        psycopg_statement, sqlalchemy_statement = _statements(self.schema, self.table)
        if isinstance(conn, psycopg.Connection):
            conn.execute(psycopg_statement, params)
        elif isinstance(conn, Session | scoped_session | sqlalchemy.Connection):
            conn.execute(sqlalchemy_statement, params)
        else:
            raise TypeError(
                "publish takes a SQLAlchemy Session or Connection or a psycopg Connection, "
                f"not {type(conn).__name__} (use publish_async for async connections)"
            )
        return ids

    async def publish_async(self, conn: AsyncConnection, event: Event) -> uuid.UUID:
        """Add one event in `conn`'s current transaction; return its event id."""
        return (await self.publish_many_async(conn, [event]))[0]

    async def publish_many_async(
        self, conn: AsyncConnection, events: Iterable[Event]
    ) -> list[uuid.UUID]:
        """Add events in `conn`'s current transaction, in one round trip; return their ids."""
        ids, params = self._rows(events)
        if not ids:
            return ids
        psycopg_statement, sqlalchemy_statement = _statements(self.schema, self.table)
        if isinstance(conn, psycopg.AsyncConnection):
            await conn.execute(psycopg_statement, params)
        elif _is_sqlalchemy_async(conn):
            await conn.execute(sqlalchemy_statement, params)
        else:
            raise TypeError(
                "publish_async takes a SQLAlchemy AsyncSession or AsyncConnection or a psycopg "
                f"AsyncConnection, not {type(conn).__name__} (use publish for sync connections)"
            )
        return ids


def _is_sqlalchemy_async(conn: object) -> bool:
    # Whoever holds an AsyncSession imported SQLAlchemy's asyncio extension already; the
    # others may lack greenlet, which it needs, so it is never imported here.
    extension = sys.modules.get("sqlalchemy.ext.asyncio")
    if extension is None:
        return False
    return isinstance(
        conn, extension.AsyncSession | extension.async_scoped_session | extension.AsyncConnection
    )


_COLUMNS: Final = (
    "event_ids",
    "topics",
    "keys",
    "payloads",
    "payloads_bytes",
    "headers",
    "event_types",
    "aggregate_types",
)


@functools.cache
def _statements(schema: str, table: str) -> tuple[sql.Composed, sqlalchemy.TextClause]:
    """The insert for psycopg (``%(name)s`` parameters) and for SQLAlchemy (``:name``)."""
    names = relay_sql.identifiers(schema, table)
    for_psycopg = relay_sql.query(
        "producer", "insert_events", names | {c: sql.Placeholder(c) for c in _COLUMNS}
    )
    for_sqlalchemy = relay_sql.query(
        "producer", "insert_events", names | {c: sql.SQL(f":{c}") for c in _COLUMNS}
    )
    return for_psycopg, sqlalchemy.text(for_sqlalchemy.as_string())


_DEFAULT: Final = Outbox()


def publish(conn: SyncConnection, event: Event) -> uuid.UUID:
    """Add one event to ``public.outbox`` in `conn`'s current transaction; return its id."""
    return _DEFAULT.publish(conn, event)


def publish_many(conn: SyncConnection, events: Iterable[Event]) -> list[uuid.UUID]:
    """Add events to ``public.outbox`` in one round trip, in `conn`'s transaction."""
    return _DEFAULT.publish_many(conn, events)


async def publish_async(conn: AsyncConnection, event: Event) -> uuid.UUID:
    """Add one event to ``public.outbox`` in `conn`'s current transaction; return its id."""
    return await _DEFAULT.publish_async(conn, event)


async def publish_many_async(conn: AsyncConnection, events: Iterable[Event]) -> list[uuid.UUID]:
    """Add events to ``public.outbox`` in one round trip, in `conn`'s transaction."""
    return await _DEFAULT.publish_many_async(conn, events)
