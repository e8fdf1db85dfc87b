"""Alembic helpers for the inbox, like `relay.alembic` for the outbox.

In an Alembic revision::

    from relay.inbox.alembic import create_inbox, drop_inbox

    def upgrade() -> None:
        create_inbox(op, version=1)

    def downgrade() -> None:
        drop_inbox(op)

The SQL is the one ``outbox-relay inbox migrate`` runs, version table included, so the
two agree afterwards; it works online and in Alembic's offline ``--sql`` mode.
"""

from __future__ import annotations

from relay import sql as relay_sql
from relay.alembic import Operations, _ddl, pending, recorded_versions, run_script
from relay.errors import MigrationError
from relay.inbox import migrate, names


def latest_version() -> int:
    """The newest inbox migration this version of outbox-relay ships."""
    return migrate.migrations()[-1].version


def upgrade_inbox(
    op: Operations,
    *,
    from_version: int,
    to_version: int,
    schema: str = "public",
    table: str = "inbox",
) -> None:
    """Apply inbox migrations ``from_version + 1`` to `to_version`, and record them."""
    latest = latest_version()
    if not 0 <= from_version < to_version <= latest:
        raise MigrationError(
            f"cannot upgrade the inbox from version {from_version} to {to_version}: this "
            f"outbox-relay ships versions 1 to {latest}"
        )
    recorded = recorded_versions(op, names.identifiers(schema, table))
    versions = pending(range(from_version + 1, to_version + 1), recorded)
    if versions:  # else applied already, e.g. by `outbox-relay inbox migrate`
        run_script(op, migrate.script(schema, table, versions=versions), "inbox")


def create_inbox(
    op: Operations, *, version: int, schema: str = "public", table: str = "inbox"
) -> None:
    """Create the inbox tables at migration `version`."""
    upgrade_inbox(op, from_version=0, to_version=version, schema=schema, table=table)


def drop_inbox(op: Operations, *, schema: str = "public", table: str = "inbox") -> None:
    """Drop everything `create_inbox` created, claims included; the schema stays."""
    op.execute(
        _ddl(relay_sql.query("inbox", "drop_inbox", names.identifiers(schema, table)).as_string())
    )
