"""The inbox's migration kit, with the outbox kit's properties (`relay.migrate`).

Versioned SQL files in ``relay/inbox/migrations``, recorded in
``<schema>.<table>_migrations``; `apply` runs the pending ones, each in its own
transaction, under an advisory lock, so running it twice (or twice at once) is safe;
`script` renders the same SQL for psql, Alembic, Flyway or Liquibase.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Container

from psycopg import sql

from relay import sql as relay_sql
from relay.errors import ConfigError
from relay.inbox import names
from relay.migrate import FILE_NAME, RECORD, VERSION_TABLE, Migration, run_locked


def migrations() -> list[Migration]:
    """Every inbox migration shipped with this version of outbox-relay, in order."""
    folder = importlib.resources.files(__package__).joinpath("migrations")
    found = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        match = FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    return found


def _statement(migration: Migration, placeholders: dict[str, sql.Composable]) -> sql.Composed:
    record = relay_sql.render(
        RECORD,
        placeholders
        | {"version": sql.Literal(migration.version), "name": sql.Literal(migration.name)},
    )
    return sql.Composed([relay_sql.render(migration.template, placeholders), sql.SQL("\n"), record])


def script(schema: str, table: str, *, versions: Container[int] | None = None) -> str:
    """All inbox migrations (or those in `versions`) as one SQL script."""
    placeholders = names.identifiers(schema, table)
    parts = [
        (
            f"-- outbox-relay inbox schema for {schema}.{table}; apply it in one transaction"
            " (psql -1 -f)."
        ),
        relay_sql.render("CREATE SCHEMA IF NOT EXISTS {schema};", placeholders).as_string(),
        relay_sql.render(VERSION_TABLE, placeholders).as_string(),
    ]
    for migration in migrations():
        if versions is None or migration.version in versions:
            parts.append(f"-- {migration.version:04d}_{migration.name}")
            parts.append(_statement(migration, placeholders).as_string())
    return "\n\n".join(parts) + "\n"


def _lock_key(schema: str, table: str) -> sql.Composed:
    return sql.SQL("hashtextextended({}, 0)").format(
        sql.Literal(f"outbox-relay inbox migrate {schema}.{table}")
    )


def apply(conninfo: str, schema: str = "public", table: str = "inbox") -> list[Migration]:
    """Apply the pending inbox migrations; return those applied (empty when up to date).

    As `relay.migrate.apply`: the first migration runs with the schema and the version
    table, so a name taken by another table leaves nothing behind.
    """
    if not conninfo:
        raise ConfigError("no database URL: set --database-url or RELAY_DATABASE_URL")
    placeholders = names.identifiers(schema, table)
    steps = {migration: _statement(migration, placeholders) for migration in migrations()}
    return run_locked(conninfo, _lock_key(schema, table), placeholders, steps, kit="inbox")
