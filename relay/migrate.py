"""The migration kit: versioned SQL files that add the outbox to a service's database.

`apply` runs the pending migrations, each in its own transaction (the first one together
with the schema and version table it needs), under an advisory lock, and records them in
``<schema>.<table>_migrations``; `script` renders the same SQL for teams that apply
migrations with Alembic, Flyway or Liquibase.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
from collections.abc import Callable, Container, Iterator
from pathlib import Path
from typing import Final

import psycopg
import psycopg.errors
from psycopg import sql

from relay import sql as relay_sql
from relay.config import Settings
from relay.errors import DatabaseError, MigrationError, first_line

#: How a migration file is named: ``0001_outbox.sql``. The inbox kit shares these.
FILE_NAME: Final = re.compile(r"^(\d{4})_(\w+)\.sql$")

VERSION_TABLE: Final = """\
CREATE TABLE IF NOT EXISTS {migrations} (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);"""
RECORD: Final = "INSERT INTO {migrations} (version, name) VALUES ({version}, {name});"


@dataclasses.dataclass(frozen=True, slots=True)
class Migration:
    """One versioned SQL file."""

    version: int
    name: str
    template: str


def _migrations_dir() -> Path:
    # In a wheel the files sit inside the package; in a source checkout (editable
    # install, tests) they sit at the top of the repository.
    packaged = Path(str(importlib.resources.files("relay"))) / "migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "migrations"


def migrations() -> list[Migration]:
    """Every migration shipped with this version of outbox-relay, in order."""
    found = []
    for path in sorted(_migrations_dir().iterdir()):
        match = FILE_NAME.match(path.name)
        if match:
            found.append(Migration(int(match[1]), match[2], path.read_text("utf-8")))
    return found


def names_for(settings: Settings) -> dict[str, sql.Composable]:
    """SQL placeholders for the outbox the settings point at."""
    return relay_sql.identifiers(
        settings.schema,
        settings.table,
        publication=settings.publication,
        max_payload_bytes=settings.max_payload_bytes,
    )


def _steps(
    settings: Settings, pending: list[Migration]
) -> Iterator[tuple[Migration, sql.Composed]]:
    names = names_for(settings)
    for migration in pending:
        record = relay_sql.render(
            RECORD,
            names
            | {"version": sql.Literal(migration.version), "name": sql.Literal(migration.name)},
        )
        yield (
            migration,
            sql.Composed([relay_sql.render(migration.template, names), sql.SQL("\n"), record]),
        )


def script(settings: Settings, *, versions: Container[int] | None = None) -> str:
    """All migrations (or those in `versions`) as one SQL script, for psql or another tool."""
    names = names_for(settings)
    parts = [
        (
            f"-- outbox-relay schema for {settings.schema}.{settings.table};"
            " apply it in one transaction (psql -1 -f)."
        ),
        relay_sql.render("CREATE SCHEMA IF NOT EXISTS {schema};", names).as_string(),
        relay_sql.render(VERSION_TABLE, names).as_string(),
    ]
    chosen = [m for m in migrations() if versions is None or m.version in versions]
    for migration, statement in _steps(settings, chosen):
        parts.append(f"-- {migration.version:04d}_{migration.name}")
        parts.append(statement.as_string())
    return "\n\n".join(parts) + "\n"


def _lock_key(settings: Settings) -> sql.Composed:
    return sql.SQL("hashtextextended({}, 0)").format(
        sql.Literal(f"outbox-relay migrate {settings.schema}.{settings.table}")
    )


def _publication_taken(conn: psycopg.Connection[tuple[object, ...]], settings: Settings) -> str:
    """A one-line hint when the publication 0001 would create exists already, else ''."""
    row = conn.execute(
        "SELECT coalesce(string_agg(quote_ident(schemaname) || '.' || quote_ident(tablename),"
        " ', '), '') FROM pg_publication p LEFT JOIN pg_publication_tables t USING (pubname)"
        " WHERE p.pubname = %s GROUP BY p.pubname",
        (settings.publication,),
    ).fetchone()
    if row is None:
        return ""
    tables = f" (it publishes {row[0]})" if row[0] else ""
    own = f"{settings.table}_pub"
    if own == settings.publication:
        own = f"{settings.schema}_{settings.table}_pub"
    return (
        f"publication {settings.publication} exists already{tables}: give this outbox its "
        f"own with --publication (e.g. --publication {own}), and its relay its own "
        "--slot-name"
    )


def apply(settings: Settings) -> list[Migration]:
    """Apply the pending migrations; return those applied (empty when up to date).

    Each migration runs in its own transaction; the first one also creates the schema and
    the version table, so a failed first migration leaves nothing behind. Concurrent
    runs are safe: they queue on an advisory lock, and the later ones find nothing left
    to do.
    """
    names = names_for(settings)
    steps = dict(_steps(settings, migrations()))
    return run_locked(
        settings.conninfo,
        _lock_key(settings),
        names,
        steps,
        first_check=lambda conn: _publication_taken(conn, settings),
    )


#: Errors of a first migration whose object exists already, made by something else.
NAME_CLASHES: Final = (
    psycopg.errors.DuplicateTable,
    psycopg.errors.DuplicateObject,
    psycopg.errors.DuplicateFunction,
)


def run_locked(
    conninfo: str,
    lock_key: sql.Composable,
    names: dict[str, sql.Composable],
    steps: dict[Migration, sql.Composed],
    *,
    kit: str = "outbox",
    first_check: Callable[[psycopg.Connection[tuple[object, ...]]], str] | None = None,
) -> list[Migration]:
    """Apply the `steps` not yet recorded in ``{migrations}``, under the advisory lock.

    Shared by the outbox and inbox `kit`s. The first migration runs in one transaction with
    the schema and the version table, so when it fails (a name taken by another object,
    or what `first_check` refuses with a one-line reason) nothing is left behind.
    """
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("SELECT pg_advisory_lock({})").format(lock_key))
            try:
                return _apply_pending(conn, names, steps, first_check)
            finally:
                conn.execute(sql.SQL("SELECT pg_advisory_unlock({})").format(lock_key))
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot connect to the database: {first_line(exc)}") from None
    except NAME_CLASHES as exc:
        raise MigrationError(f"{_failed(kit)}: {name_clash(exc, kit)}") from None
    except psycopg.Error as exc:
        raise MigrationError(f"{_failed(kit)}: {first_line(exc)}") from None


def _failed(kit: str) -> str:
    return "migration failed" if kit == "outbox" else f"{kit} migration failed"


def name_clash(exc: BaseException, kit: str, choose: str = "--table or --schema") -> str:
    """The one line for a migration that found its name taken by something else."""
    return (
        f"{first_line(exc)}, and not as this {kit}'s (its version table does not record "
        f"it): choose another {choose}, or rename what holds the name"
    )


def _apply_pending(
    conn: psycopg.Connection[tuple[object, ...]],
    names: dict[str, sql.Composable],
    steps: dict[Migration, sql.Composed],
    first_check: Callable[[psycopg.Connection[tuple[object, ...]]], str] | None,
) -> list[Migration]:
    with conn.transaction():
        conn.execute(relay_sql.render("CREATE SCHEMA IF NOT EXISTS {schema}", names))
        conn.execute(relay_sql.render(VERSION_TABLE, names))
        done = {
            row[0]
            for row in conn.execute(relay_sql.render("SELECT version FROM {migrations}", names))
        }
        pending = [m for m in steps if m.version not in done]
        if not pending:
            return []
        if pending[0].version == 1 and first_check and (reason := first_check(conn)):
            # Raised inside the transaction: the schema and version table go with it.
            raise MigrationError(reason)
        conn.execute(steps[pending[0]])
    for migration in pending[1:]:
        with conn.transaction():
            conn.execute(steps[migration])
    return pending


def pending_versions(conn: psycopg.Connection[tuple[object, ...]], settings: Settings) -> list[int]:
    """Versions not yet applied to the database `conn` is connected to."""
    names = names_for(settings)
    exists = conn.execute(
        "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text)) IS NOT NULL",
        (settings.schema, f"{settings.table}_migrations"),
    ).fetchone()
    done: set[object] = set()
    if exists and exists[0]:
        done = {
            row[0]
            for row in conn.execute(relay_sql.render("SELECT version FROM {migrations}", names))
        }
    return [m.version for m in migrations() if m.version not in done]
