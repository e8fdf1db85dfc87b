"""Alembic helpers: the outbox as part of a SQLAlchemy service's own migrations.

In an Alembic revision::

    from relay.alembic import create_outbox, drop_outbox

    def upgrade() -> None:
        create_outbox(op, version=1)

    def downgrade() -> None:
        drop_outbox(op)

The SQL is the one ``outbox-relay migrate`` runs (including its version table, so
``outbox-relay migrate`` and ``outbox-relay doctor`` agree with Alembic afterwards), sent
through ``op.execute``: it works online and in Alembic's offline ``--sql`` mode. The
version is pinned in the revision so that the revision means the same thing forever;
when a later outbox-relay ships migration 2, a new revision calls
``upgrade_outbox(op, from_version=1, to_version=2)``.

Online, versions the version table records already (an outbox made by ``outbox-relay
migrate`` before the service adopted Alembic) are skipped, as ``migrate`` skips them; a
name another object holds fails the revision with one `MigrationError` line, and
Alembic's transaction takes everything back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Protocol

import sqlalchemy
from psycopg import sql
from sqlalchemy.schema import DDL

from relay import config, migrate
from relay import sql as relay_sql
from relay.errors import MigrationError, first_line

#: The limit ``outbox-relay migrate`` puts in the CHECK unless told otherwise.
DEFAULT_MAX_PAYLOAD_BYTES: Final = config.Settings().max_payload_bytes


class MigrationContext(Protocol):
    """What we use of Alembic's migration context."""

    #: True in offline (``--sql``) mode: statements are printed, not run.
    as_sql: bool


class Operations(Protocol):
    """What we use of ``alembic.op``."""

    def execute(self, sqltext: DDL, /) -> object:
        """Run a statement in the migration's transaction (or print it, offline)."""

    def get_context(self) -> MigrationContext:
        """The migration context (online or offline)."""

    def get_bind(self) -> sqlalchemy.Connection:
        """The connection the revision runs on (online only)."""


def recorded_versions(op: Operations, names: dict[str, sql.Composable]) -> set[int]:
    """Versions ``{migrations}`` records already; none offline, where nothing is asked."""
    if op.get_context().as_sql:
        return set()
    conn = op.get_bind()
    table = names["migrations"].as_string()
    found = conn.execute(sqlalchemy.text("SELECT to_regclass(:table)"), {"table": table})
    if found.scalar() is None:
        return set()
    query = relay_sql.render("SELECT version FROM {migrations}", names).as_string()
    return {int(version) for version in conn.execute(sqlalchemy.text(query)).scalars()}


def run_script(op: Operations, script: str, kit: str) -> None:
    """Send a migration script through `op`; a name clash becomes one `MigrationError` line."""
    try:
        op.execute(_ddl(script))
    except sqlalchemy.exc.DBAPIError as exc:
        if isinstance(exc.orig, migrate.NAME_CLASHES):
            raise MigrationError(
                f"{kit} migration failed: {migrate.name_clash(exc.orig, kit, 'table= or schema=')}"
            ) from None
        raise MigrationError(f"{kit} migration failed: {first_line(exc.orig or exc)}") from None


def pending(wanted: Iterable[int], recorded: set[int]) -> list[int]:
    """The versions of `wanted` still to apply."""
    return [version for version in wanted if version not in recorded]


def _settings(schema: str, table: str, publication: str, max_payload_bytes: int) -> config.Settings:
    # The same checks as the flags and RELAY_* variables: plain SQL names, a positive limit.
    return config.load_settings(
        {
            "schema": schema,
            "table": table,
            "publication": publication,
            "max_payload_bytes": str(max_payload_bytes),
        },
        {},
    )


def _ddl(text: str) -> DDL:
    # DDL applies %-formatting to its text: keep any literal % as it is.
    return DDL(text.replace("%", "%%"))  # type: ignore[no-untyped-call]


def latest_version() -> int:
    """The newest migration this version of outbox-relay ships."""
    return migrate.migrations()[-1].version


def upgrade_outbox(
    op: Operations,
    *,
    from_version: int,
    to_version: int,
    schema: str = "public",
    table: str = "outbox",
    publication: str = "outbox_pub",
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> None:
    """Apply outbox migrations ``from_version + 1`` to `to_version`, and record them."""
    latest = latest_version()
    if not 0 <= from_version < to_version <= latest:
        raise MigrationError(
            f"cannot upgrade the outbox from version {from_version} to {to_version}: this "
            f"outbox-relay ships versions 1 to {latest}"
        )
    settings = _settings(schema, table, publication, max_payload_bytes)
    recorded = recorded_versions(op, migrate.names_for(settings))
    versions = pending(range(from_version + 1, to_version + 1), recorded)
    if versions:  # else applied already, e.g. by `outbox-relay migrate`
        run_script(op, migrate.script(settings, versions=versions), "outbox")


def create_outbox(
    op: Operations,
    *,
    version: int,
    schema: str = "public",
    table: str = "outbox",
    publication: str = "outbox_pub",
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> None:
    """Create the outbox at migration `version` (its table, functions and publication)."""
    upgrade_outbox(
        op,
        from_version=0,
        to_version=version,
        schema=schema,
        table=table,
        publication=publication,
        max_payload_bytes=max_payload_bytes,
    )


def drop_outbox(
    op: Operations,
    *,
    schema: str = "public",
    table: str = "outbox",
    publication: str = "outbox_pub",
) -> None:
    """Drop everything `create_outbox` created, events included; the schema stays."""
    settings = _settings(schema, table, publication, DEFAULT_MAX_PAYLOAD_BYTES)
    names = migrate.names_for(settings)
    op.execute(_ddl(relay_sql.query("uninstall", "drop_outbox", names).as_string()))
