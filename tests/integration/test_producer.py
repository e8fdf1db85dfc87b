from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
import sqlalchemy
from psycopg import errors
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from relay import migrate
from relay.config import Settings
from relay.errors import InvalidEventError
from relay.producer import (
    Event,
    Outbox,
    publish,
    publish_async,
    publish_many,
    publish_many_async,
)


def _sqlalchemy_url(database_url: str) -> str:
    # asyncpg is not a dependency: SQLAlchemy's psycopg dialect does sync and async.
    return database_url.replace("postgresql://", "postgresql+psycopg://", 1)


def _visible(database_url: str, ids: Sequence[uuid.UUID], table: str = "public.outbox") -> int:
    """How many of `ids` another connection sees: committed rows only."""
    with psycopg.connect(database_url, autocommit=True) as other:
        row = other.execute(
            f"SELECT count(*) FROM {table} WHERE event_id = ANY(%s)",
            (list(ids),),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _events(topic: str, count: int = 3) -> list[Event]:
    return [Event(topic, {"n": n}, key="k") for n in range(count)]


@pytest.fixture
def engine(database_url: str) -> Iterator[sqlalchemy.Engine]:
    engine = sqlalchemy.create_engine(_sqlalchemy_url(database_url))
    yield engine
    engine.dispose()


# Visible only after the caller commits, gone after a rollback: every API.


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_psycopg_connection(database_url: str, topic: str, outcome: str) -> None:
    with psycopg.connect(database_url) as conn:
        ids = [publish(conn, Event(topic, {"a": 1}))]
        ids += publish_many(conn, _events(topic))
        assert _visible(database_url, ids) == 0
        getattr(conn, outcome)()
    assert _visible(database_url, ids) == (4 if outcome == "commit" else 0)


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_sqlalchemy_session(
    engine: sqlalchemy.Engine, database_url: str, topic: str, outcome: str
) -> None:
    with Session(engine) as session:
        ids = [publish(session, Event(topic, {"a": 1}))]
        ids += publish_many(session, _events(topic))
        assert _visible(database_url, ids) == 0
        getattr(session, outcome)()
    assert _visible(database_url, ids) == (4 if outcome == "commit" else 0)


def test_sqlalchemy_connection(engine: sqlalchemy.Engine, database_url: str, topic: str) -> None:
    with engine.connect() as conn:
        ids = publish_many(conn, _events(topic))
        assert _visible(database_url, ids) == 0
        conn.commit()
    assert _visible(database_url, ids) == 3


def test_sqlalchemy_scoped_session(
    engine: sqlalchemy.Engine, database_url: str, topic: str
) -> None:
    # What Flask-SQLAlchemy's db.session is.
    session = scoped_session(sessionmaker(engine))
    try:
        ids = publish_many(session, _events(topic))
        assert _visible(database_url, ids) == 0
        session.commit()
    finally:
        session.remove()
    assert _visible(database_url, ids) == 3


async def test_sqlalchemy_async_scoped_session(database_url: str, topic: str) -> None:
    from sqlalchemy.ext.asyncio import async_scoped_session, async_sessionmaker

    engine = create_async_engine(_sqlalchemy_url(database_url))
    session = async_scoped_session(async_sessionmaker(engine), scopefunc=lambda: "test")
    try:
        ids = await publish_many_async(session, _events(topic))
        assert _visible(database_url, ids) == 0
        await session.commit()
    finally:
        await session.remove()
        await engine.dispose()
    assert _visible(database_url, ids) == 3


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
async def test_psycopg_async_connection(database_url: str, topic: str, outcome: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        ids = [await publish_async(conn, Event(topic, {"a": 1}))]
        ids += await publish_many_async(conn, _events(topic))
        assert _visible(database_url, ids) == 0
        await getattr(conn, outcome)()
    assert _visible(database_url, ids) == (4 if outcome == "commit" else 0)


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
async def test_sqlalchemy_async_session(database_url: str, topic: str, outcome: str) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    engine = create_async_engine(_sqlalchemy_url(database_url))
    try:
        async with AsyncSession(engine) as session:
            ids = [await publish_async(session, Event(topic, {"a": 1}))]
            ids += await publish_many_async(session, _events(topic))
            assert _visible(database_url, ids) == 0
            await getattr(session, outcome)()
        async with engine.connect() as conn:
            more = await publish_many_async(conn, _events(topic))
            assert _visible(database_url, more) == 0
            await conn.commit()
    finally:
        await engine.dispose()
    assert _visible(database_url, ids) == (4 if outcome == "commit" else 0)
    assert _visible(database_url, more) == 3


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_sql_functions_for_any_language(database_url: str, topic: str, outcome: str) -> None:
    with psycopg.connect(database_url) as conn:
        rows = [
            conn.execute(
                "SELECT public.outbox_publish(%s, %s, %s::jsonb)", (topic, "k1", '{"a": 1}')
            ).fetchone(),
            conn.execute(
                "SELECT public.outbox_publish(%s, NULL, '[1]', %s, 'Created', 'order')",
                (topic, '{"h": "v"}'),
            ).fetchone(),
            conn.execute(
                "SELECT public.outbox_publish_bytes(%s, 'k2', %s)", (topic, b"\x00avro")
            ).fetchone(),
        ]
        ids = [row[0] for row in rows if row is not None]
        assert len(ids) == 3
        assert all(isinstance(event_id, uuid.UUID) for event_id in ids)
        assert _visible(database_url, ids) == 0
        getattr(conn, outcome)()
    assert _visible(database_url, ids) == (3 if outcome == "commit" else 0)
    if outcome == "commit":
        with psycopg.connect(database_url) as conn:
            stored = conn.execute(
                "SELECT key, payload, payload_bytes, headers, event_type, aggregate_type "
                "FROM outbox WHERE topic = %s ORDER BY id",
                (topic,),
            ).fetchall()
        assert stored == [
            ("k1", {"a": 1}, None, {}, None, None),
            (None, [1], None, {"h": "v"}, "Created", "order"),
            ("k2", None, b"\x00avro", {}, None, None),
        ]


# What is stored.


def test_rows_hold_what_the_events_said_in_call_order(database_url: str, topic: str) -> None:
    given_id = uuid.uuid4()
    events = [
        Event(
            topic,
            {"order": 1, "name": "é"},
            key="order-1",
            headers={"traceparent": "00-abc-def-01"},
            event_type="OrderPlaced",
            aggregate_type="order",
            event_id=given_id,
        ),
        Event(topic, b"\x08\x96\x01", key="order-1"),
        Event(topic, None, key="order-1"),
        *[Event(topic, n, key="order-2") for n in range(500)],
    ]
    with psycopg.connect(database_url) as conn:
        ids = publish_many(conn, events)
        conn.commit()
        rows = conn.execute(
            "SELECT event_id, key, payload, payload_bytes, headers, event_type, aggregate_type,"
            " state FROM outbox WHERE topic = %s ORDER BY id",
            (topic,),
        ).fetchall()
    assert ids[0] == given_id
    assert [row[0] for row in rows] == ids  # outbox order is call order
    assert rows[0][1:] == (
        "order-1",
        {"order": 1, "name": "é"},
        None,
        {"traceparent": "00-abc-def-01"},
        "OrderPlaced",
        "order",
        "pending",
    )
    assert rows[1][1:5] == ("order-1", None, b"\x08\x96\x01", {})
    assert rows[2][1:4] == ("order-1", None, None)
    assert [row[2] for row in rows[3:]] == list(range(500))


def test_an_outbox_elsewhere(database_url: str, topic: str) -> None:
    elsewhere = Settings(
        database_url=database_url, schema="events", table="outbox_v2", publication="v2_pub"
    )
    migrate.apply(elsewhere)
    with psycopg.connect(database_url) as conn:
        ids = Outbox.from_settings(elsewhere).publish_many(conn, _events(topic))
        conn.commit()
    assert _visible(database_url, ids, "events.outbox_v2") == 3
    assert _visible(database_url, ids) == 0


def test_no_events_sends_nothing(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        assert publish_many(conn, []) == []
        assert conn.info.transaction_status is psycopg.pq.TransactionStatus.IDLE


def test_a_wrong_connection_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="publish takes a SQLAlchemy Session"):
        publish(object(), Event("t", {}))  # type: ignore[arg-type]


# Many events, one round trip.


class CountingCursor(psycopg.Cursor[Any]):
    executed = 0

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        CountingCursor.executed += 1
        return super().execute(*args, **kwargs)


class CountingAsyncCursor(psycopg.AsyncCursor[Any]):
    executed = 0

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        CountingAsyncCursor.executed += 1
        return await super().execute(*args, **kwargs)


def test_many_events_are_one_statement_with_psycopg(database_url: str, topic: str) -> None:
    with psycopg.connect(database_url, cursor_factory=CountingCursor) as conn:
        CountingCursor.executed = 0
        publish_many(conn, _events(topic, 1000))
        assert CountingCursor.executed == 1
        conn.commit()
    assert _count(database_url, topic) == 1000


async def test_many_events_are_one_statement_with_psycopg_async(
    database_url: str, topic: str
) -> None:
    async with await psycopg.AsyncConnection.connect(
        database_url, cursor_factory=CountingAsyncCursor
    ) as conn:
        CountingAsyncCursor.executed = 0
        await publish_many_async(conn, _events(topic, 1000))
        assert CountingAsyncCursor.executed == 1
        await conn.commit()
    assert _count(database_url, topic) == 1000


def _count_statements(engine: sqlalchemy.Engine) -> list[str]:
    statements: list[str] = []

    @sqlalchemy.event.listens_for(engine, "before_cursor_execute")
    def record(*args: Any) -> None:
        statements.append(args[2])

    return statements


def test_many_events_are_one_statement_with_sqlalchemy(
    engine: sqlalchemy.Engine, database_url: str, topic: str
) -> None:
    with Session(engine) as session:
        session.execute(sqlalchemy.text("SELECT 1"))  # connect and begin first
        statements = _count_statements(engine)
        publish_many(session, _events(topic, 1000))
        assert len(statements) == 1
        assert statements[0].lstrip().startswith("INSERT INTO")
        session.commit()
    assert _count(database_url, topic) == 1000


async def test_many_events_are_one_statement_with_sqlalchemy_async(
    database_url: str, topic: str
) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    engine = create_async_engine(_sqlalchemy_url(database_url))
    try:
        async with AsyncSession(engine) as session:
            await session.execute(sqlalchemy.text("SELECT 1"))
            statements = _count_statements(engine.sync_engine)
            await publish_many_async(session, _events(topic, 1000))
            assert len(statements) == 1
            await session.commit()
    finally:
        await engine.dispose()
    assert _count(database_url, topic) == 1000


def _count(database_url: str, topic: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM outbox WHERE topic = %s", (topic,)).fetchone()
    assert row is not None
    return int(row[0])


# Bad events: refused before anything is sent; the caller's transaction goes on.

A_SET: Any = {1, 2}


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda topic: Event(topic, {"when": A_SET}), r"payload\['when'\] is a set"),
        (lambda topic: Event(topic, "x" * 1_000_000), "more than the outbox's limit of 1000000"),
        (lambda topic: Event(topic, b"x" * 1_000_001), "more than the outbox's limit of 1000000"),
    ],
)
def test_a_bad_payload_inserts_nothing_and_the_transaction_goes_on(
    database_url: str, topic: str, build: Any, message: str
) -> None:
    with psycopg.connect(database_url, cursor_factory=CountingCursor) as conn:
        CountingCursor.executed = 0
        with pytest.raises(InvalidEventError, match=message):
            publish_many(conn, [*_events(topic), build(topic)])
        assert CountingCursor.executed == 0
        ids = publish_many(conn, _events(topic))  # the transaction is not aborted
        conn.commit()
    assert _count(database_url, topic) == 3
    assert _visible(database_url, ids) == 3


def test_an_invalid_topic_never_becomes_an_event(database_url: str, topic: str) -> None:
    with psycopg.connect(database_url) as conn:
        with pytest.raises(InvalidEventError, match="Kafka allows only letters"):
            publish_many(conn, [*_events(topic), Event("bad topic", {})])
        conn.commit()
    assert _count(database_url, topic) == 0


def test_the_largest_payload_the_check_allows_passes_both_guards(
    database_url: str, topic: str
) -> None:
    # jsonb's text form of a string is the string plus two quotes.
    largest = "x" * (1_000_000 - 2)
    with psycopg.connect(database_url) as conn:
        publish(conn, Event(topic, largest))
        conn.commit()
    assert _count(database_url, topic) == 1


# The CHECKs guard writers that bypass the producer API.


@pytest.mark.parametrize(
    ("columns", "values", "constraint"),
    [
        ("topic, payload", ("bad topic", "{}"), "outbox_topic_valid"),
        ("topic, payload", ("", "{}"), "outbox_topic_valid"),
        ("topic, payload", ("..", "{}"), "outbox_topic_valid"),
        ("topic, payload", ("x" * 250, "{}"), "outbox_topic_valid"),
        ("topic, payload", ("t", json.dumps("x" * 1_000_000)), "outbox_payload_size"),
        ("topic, payload_bytes", ("t", b"x" * 1_000_001), "outbox_payload_size"),
        ("topic, payload, payload_bytes", ("t", "{}", b"x"), "outbox_one_payload"),
        ("topic, headers", ("t", "[1]"), "outbox_headers_object"),
        ("topic, key", ("t", "k" * 1025), "outbox_key_size"),
        ("topic, key", ("t", "é" * 513), "outbox_key_size"),
        ("topic, key", ("t", "k" * 2_000_000), "outbox_key_size"),
        (
            "topic, headers",
            ("t", json.dumps({f"h{n}": "v" for n in range(65)})),
            "outbox_headers_count",
        ),
        (
            "topic, headers",
            ("t", json.dumps({"h": "x" * (65537 - len('{"h": ""}'))})),
            "outbox_headers_size",
        ),
        ("topic, headers", ("t", json.dumps({"h": "x" * 10_000_000})), "outbox_headers_size"),
    ],
)
def test_checks_reject_bad_rows_written_with_plain_sql(
    database_url: str, columns: str, values: tuple[object, ...], constraint: str
) -> None:
    placeholders = ", ".join(["%s"] * len(values))
    with (
        psycopg.connect(database_url) as conn,
        pytest.raises(errors.CheckViolation) as caught,
    ):
        conn.execute(
            f"INSERT INTO outbox ({columns}) VALUES ({placeholders})",
            values,
        )
    assert caught.value.diag.constraint_name == constraint
    assert constraint in str(caught.value)


def test_the_largest_key_and_headers_the_checks_allow_pass_both_guards(
    database_url: str, topic: str
) -> None:
    # The producer's limits and the CHECKs measure the same way, to the byte.
    headers = {f"h{n:02}": "" for n in range(63)}
    # 63 headers {"h00": "", ...} and one more, "zz", padded to 65536 bytes of jsonb text.
    text = json.dumps(headers | {"zz": ""})
    headers["zz"] = "\n" * ((65536 - len(text)) // 2) + "x" * ((65536 - len(text)) % 2)
    with psycopg.connect(database_url) as conn:
        publish(conn, Event(topic, {}, key="é" * 512, headers=headers))
        conn.commit()
        row = conn.execute(
            "SELECT octet_length(headers::text), octet_length(key) FROM outbox WHERE topic = %s",
            (topic,),
        ).fetchone()
    assert row == (65536, 1024)


@pytest.mark.parametrize(
    ("call", "constraint"),
    [
        ("SELECT outbox_publish('t', repeat('k', 1025), '{}')", "outbox_key_size"),
        (
            (
                "SELECT outbox_publish_bytes('t', NULL, '\\x00',"
                " jsonb_build_object('h', repeat('x', 70000)))"
            ),
            "outbox_headers_size",
        ),
        (
            (
                "SELECT outbox_publish('t', NULL, '{}',"
                " (SELECT jsonb_object_agg('h' || n, 'v') FROM generate_series(1, 65) n))"
            ),
            "outbox_headers_count",
        ),
    ],
)
def test_the_sql_functions_are_bound_by_the_event_limits(
    database_url: str, call: str, constraint: str
) -> None:
    with psycopg.connect(database_url) as conn, pytest.raises(errors.CheckViolation) as caught:
        conn.execute(call)
    assert caught.value.diag.constraint_name == constraint


def test_the_sql_function_is_guarded_by_the_checks_too(database_url: str) -> None:
    with (
        psycopg.connect(database_url) as conn,
        pytest.raises(errors.CheckViolation, match="outbox_topic_valid"),
    ):
        conn.execute("SELECT outbox_publish('orders/eu', NULL, '{}')")
