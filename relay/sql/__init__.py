"""SQL of the relay, in `.sql` files loaded by name.

Each file holds blocks that start with a ``-- name: some_query`` line. Placeholders in
braces (``{outbox}``, ``{pending_index}``, ...) are filled by `identifiers` with quoted
identifiers and literals through psycopg.sql: configurable names never reach SQL as text.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from typing import Final

from psycopg import sql

_NAME_LINE: Final = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


@functools.cache
def _blocks(file: str) -> dict[str, str]:
    text = importlib.resources.files(__package__).joinpath(f"{file}.sql").read_text("utf-8")
    parts = _NAME_LINE.split(text)
    # split() with a group returns the preamble, then name and body in turn.
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def identifiers(
    schema: str,
    table: str,
    *,
    publication: str = "outbox_pub",
    max_payload_bytes: int = 1_000_000,
) -> dict[str, sql.Composable]:
    """The placeholders every SQL file may use, for the outbox at ``schema.table``."""

    def own(suffix: str) -> sql.Identifier:
        # Objects that belong to the outbox are named after its table, so two outboxes
        # can live in one schema.
        return sql.Identifier(f"{table}_{suffix}")

    def qualified(suffix: str) -> sql.Identifier:
        return sql.Identifier(schema, f"{table}_{suffix}")

    return {
        "schema": sql.Identifier(schema),
        "outbox": sql.Identifier(schema, table),
        "outbox_name": sql.Literal(f"{schema}.{table}"),
        "outbox_regclass": sql.Literal(f"{_quoted(schema)}.{_quoted(table)}"),
        "leader_regclass": sql.Literal(f"{_quoted(schema)}.{_quoted(table + '_leader')}"),
        "migrations": qualified("migrations"),
        "topic_valid": own("topic_valid"),
        "one_payload": own("one_payload"),
        "payload_size": own("payload_size"),
        "headers_object": own("headers_object"),
        "state_known": own("state_known"),
        "key_size": own("key_size"),
        "headers_count": own("headers_count"),
        "headers_size": own("headers_size"),
        "pending_index": own("pending"),
        "parked_index": own("parked"),
        "notify_function": qualified("notify"),
        "notify_trigger": own("notify"),
        "channel": sql.Literal(notify_channel(schema, table)),
        "relay_owned_function": qualified("relay_owned"),
        "relay_owned_trigger": own("relay_owned"),
        "leader": qualified("leader"),
        "publish_function": qualified("publish"),
        "publish_bytes_function": qualified("publish_bytes"),
        "publication": sql.Identifier(publication),
        "max_payload_bytes": sql.Literal(max_payload_bytes),
    }


def _quoted(name: str) -> str:
    # For a regclass literal: the name as psql would quote it.
    return '"' + name.replace('"', '""') + '"'


def notify_channel(schema: str, table: str) -> str:
    """The LISTEN channel the outbox trigger notifies on commit."""
    return f"{schema}.{table}"


def render(template: str, names: dict[str, sql.Composable]) -> sql.Composed:
    """Fill a SQL template's placeholders; unknown placeholders are a programming error."""
    return sql.SQL(template).format(**names)


def query(file: str, name: str, names: dict[str, sql.Composable]) -> sql.Composed:
    """The query `name` from ``relay/sql/<file>.sql``, placeholders filled."""
    return render(_blocks(file)[name], names)
