"""A poll relay and a WAL relay running side by side for many property-test examples.

Starting a relay and a consumer takes seconds; a Hypothesis example should take a few
milliseconds. `RelayPair` starts both relays once, as ``outbox-relay run`` processes,
each on an outbox table of its own in one database (``outbox`` polled, ``outbox_wal``
streamed from a slot), and one consumer of both topics. An example writes the same row to
both tables and waits for the two records (`RelayPair.write` and `RelayPair.record`), or
for the rows to leave ``pending`` another way (`RelayPair.outcome`: parked).

The relays run in processes of their own, and the consumer only while a test waits for a
record, so nothing touches the `random` module while Hypothesis draws an example.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from aiokafka import AIOKafkaConsumer

from relay import migrate
from relay._embedded import EmbeddedBroker, EmbeddedPostgres
from relay.config import Mode, Settings
from tests.integration.poll_stack import RelayProcess, relay_process
from tests.support import Consumed, drop_database

#: The two tables, by mode.
TABLES = {Mode.POLL: "outbox", Mode.WAL: "outbox_wal"}
WAIT_S = 30.0


#: One JSON token: a string (with its escapes), a number, a literal or a punctuation mark.
_TOKEN = re.compile(
    r'"(?:[^"\\]|\\.)*"|-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|true|false|null|[{}\[\],:]'
    r"|(?P<space>\s+)",
    re.DOTALL,
)


def tokens(text: str) -> list[str]:
    """`text`'s JSON tokens, whitespace between them left out; fails on anything else."""
    found: list[str] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        assert match is not None, f"not a JSON token at {position}: {text[position:][:40]!r}"
        if match.group("space") is None:
            found.append(match.group())
        position = match.end()
    return found


@dataclasses.dataclass(frozen=True, slots=True)
class Written:
    """One row as written, in one table."""

    mode: Mode
    id: int
    event_id: str
    topic: str


class RelayPair:
    """Both relays, their consumer and what it received so far (see the module docstring)."""

    def __init__(self, settings: Settings, relays: dict[Mode, RelayProcess]) -> None:
        self.database_url = settings.database_url
        self.relays = relays
        suffix = uuid.uuid4().hex[:8]
        self.topics = {mode: f"pair-{mode.value}-{suffix}" for mode in Mode}
        self._received: dict[tuple[str, str], Consumed] = {}
        #: Every record's headers in order, duplicates kept (`Consumed` holds a dict).
        self._headers: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
        self._loop = asyncio.new_event_loop()
        self._bootstrap_servers = settings.bootstrap_servers
        self._consumer: AIOKafkaConsumer | None = None

    def start(self) -> None:
        """Start the consumer; return once a first row made it through both relays."""
        self._consumer = self._loop.run_until_complete(self._start_consumer())
        for row in self.write("SELECT %s, 'warm-up', '{}'::jsonb, NULL::bytea, '{}'::jsonb"):
            self.record(row, timeout_s=60)

    async def _start_consumer(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            *self.topics.values(),
            bootstrap_servers=self._bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            metadata_max_age_ms=500,
            fetch_max_wait_ms=20,
        )
        await consumer.start()
        return consumer

    def close(self) -> None:
        """Stop the consumer."""
        if self._consumer is not None:
            self._loop.run_until_complete(self._consumer.stop())
        self._loop.close()

    def check_alive(self) -> None:
        """Fail the test when a relay stopped by itself (a crash)."""
        for mode, relay in self.relays.items():
            code = relay.process.poll()
            assert code is None, f"the {mode} relay exited with {code}: {relay.log.read_text()}"

    def _receive(self) -> None:
        assert self._consumer is not None
        batch = self._loop.run_until_complete(self._consumer.getmany(timeout_ms=20))
        for messages in batch.values():
            for message in messages:
                record = Consumed.of(message)
                self._received[(message.topic, record.event_id)] = record
                self._headers[(message.topic, record.event_id)] = [
                    (name, bytes(value)) for name, value in message.headers
                ]

    def write(
        self,
        select: str,
        *params: object,
        event_type: str | None = None,
        aggregate_type: str | None = None,
    ) -> list[Written]:
        """Insert the row `select` returns, ``(topic, key, payload, payload_bytes, headers)``
        with the topic as its first parameter, into both tables, each in its own commit."""
        written = []
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            for mode, table in TABLES.items():
                row = conn.execute(
                    f"INSERT INTO {table} "
                    "(topic, key, payload, payload_bytes, headers, event_type, aggregate_type) "
                    f"SELECT s.*, %s, %s FROM ({select}) AS s RETURNING id, event_id::text",
                    (event_type, aggregate_type, self.topics[mode], *params),
                ).fetchone()
                assert row is not None
                written.append(Written(mode, row[0], row[1], self.topics[mode]))
        return written

    def record(self, row: Written, timeout_s: float = WAIT_S) -> Consumed:
        """The record of `row`, waiting for it to arrive."""
        outcome = self.outcome(row, timeout_s)
        assert isinstance(outcome, Consumed), f"{row} parked: {outcome}"
        return outcome

    def headers(self, row: Written) -> list[tuple[str, bytes]]:
        """The headers of `row`'s record (received already), in order."""
        return self._headers[(row.topic, row.event_id)]

    def outcome(self, row: Written, timeout_s: float = WAIT_S) -> Consumed | str:
        """The record of `row`, or the `last_error` it was parked with; waits for either."""
        deadline = time.monotonic() + timeout_s
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while True:
                self._receive()
                if (row.topic, row.event_id) in self._received:
                    return self._received[(row.topic, row.event_id)]
                self.check_alive()
                found = conn.execute(
                    f"SELECT state, last_error FROM {TABLES[row.mode]} WHERE id = %s",
                    (row.id,),
                ).fetchone()
                assert found is not None
                state, error = found
                if state == "parked":
                    assert error, f"{row} parked without a reason"
                    return str(error)
                assert state in {"pending", "sent"}, (row, state)
                assert time.monotonic() < deadline, f"{row} still {state} after {timeout_s:.0f} s"


def expected_headers(database_url: str, written: Written) -> list[tuple[str, bytes]]:
    """What a row's headers must become, from PostgreSQL alone: a string's text as UTF-8,
    any other value its jsonb text without whitespace (token for token); nulls left out;
    after ``event_id`` and the type columns that are not NULL."""
    with psycopg.connect(database_url) as conn:
        members = conn.execute(
            f"SELECT h.key, jsonb_typeof(h.value), h.value #>> '{{}}', h.value::text "
            f"FROM {TABLES[written.mode]} AS o, jsonb_each(o.headers) AS h WHERE o.id = %s",
            (written.id,),
        ).fetchall()
        types = conn.execute(
            f"SELECT event_type, aggregate_type FROM {TABLES[written.mode]} WHERE id = %s",
            (written.id,),
        ).fetchone()
    assert types is not None
    headers = [("event_id", written.event_id.encode())]
    headers += [
        (name, value.encode())
        for name, value in zip(("event_type", "aggregate_type"), types, strict=True)
        if value is not None
    ]
    for name, kind, text, json_text in members:
        if name == "event_id" or kind == "null":
            continue
        if kind == "string":
            headers.append((name, text.encode()))
        else:
            headers.append((name, "".join(tokens(json_text)).encode()))
    return headers


@contextlib.contextmanager
def relay_pair(
    postgres: EmbeddedPostgres, broker: EmbeddedBroker, logs: Path
) -> Iterator[RelayPair]:
    """A `RelayPair` on a fresh database (dropped afterwards); relay logs go to `logs`."""
    name = f"pair_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE outbox_template")
    settings = Settings(
        database_url=postgres.url_for(name), bootstrap_servers=broker.bootstrap_servers
    )
    slot = f"pair_{name[5:]}"
    try:
        migrate.apply(dataclasses.replace(settings, table=TABLES[Mode.WAL], publication=slot))
        common = ("--park-after-attempts", "1", "--log-level", "warning", "--poll-interval", "0.02")
        wal = (
            "--mode", "wal", "--table", TABLES[Mode.WAL], "--slot-name", slot,
            "--publication", slot, "--heartbeat-interval", "0.5",
        )  # fmt: skip
        with (
            relay_process(settings, logs / "poll.log", *common) as poll,
            relay_process(settings, logs / "wal.log", *common, *wal) as streamed,
        ):
            pair = RelayPair(settings, {Mode.POLL: poll, Mode.WAL: streamed})
            pair.start()
            try:
                yield pair
                pair.check_alive()
            finally:
                pair.close()
    finally:
        drop_database(postgres.url, name)
