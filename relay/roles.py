"""Least-privilege grants for the relay's role and the services' roles.

The relay reads, updates and deletes outbox rows, and in WAL mode streams changes (the
REPLICATION attribute); services only insert events. `script` renders the grants for a
DBA to review or apply with psql; `apply` runs them in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg import sql

from relay import migrate
from relay import sql as relay_sql
from relay.config import Mode, Settings
from relay.errors import ConfigError, DatabaseError, first_line


def statements(
    settings: Settings, *, relay_roles: Sequence[str] = (), app_roles: Sequence[str] = ()
) -> list[sql.Composed]:
    """The grants, one composed block per role, for the outbox `settings` point at.

    WAL mode (``settings.mode``) adds REPLICATION for the relay's roles, and INSERT when
    ``settings.message_prefix`` makes the relay park table-less messages as rows; the
    prefix also restricts ``pg_logical_emit_message`` to the given roles (a superuser's
    job: the function belongs to the bootstrap superuser).
    """
    if not relay_roles and not app_roles:
        raise ConfigError("no role to grant to: give --relay-role and/or --app-role")
    for role in (*relay_roles, *app_roles):
        if not role or "\x00" in role or "$grants$" in role:
            raise ConfigError(f"invalid role name {role!r}")
    names = migrate.names_for(settings)
    messages = settings.mode is Mode.WAL and bool(settings.message_prefix)
    blocks = []

    def role_names(role: str) -> dict[str, sql.Composable]:
        return names | {"role": sql.Identifier(role), "role_name": sql.Literal(role)}

    for role in relay_roles:
        blocks.append(relay_sql.query("roles", "relay", role_names(role)))
        if settings.mode is Mode.WAL:
            blocks.append(relay_sql.query("roles", "relay_wal", role_names(role)))
            if messages:
                blocks.append(relay_sql.query("roles", "relay_messages", role_names(role)))
    blocks.extend(relay_sql.query("roles", "app", role_names(role)) for role in app_roles)
    if messages:
        # Table-less events only from the roles given here (and the relay's heartbeats).
        blocks.append(relay_sql.query("roles", "restrict_messages", names))
        blocks.extend(
            relay_sql.query("roles", "emit_messages", role_names(role))
            for role in (*relay_roles, *app_roles)
        )
    return blocks


def script(
    settings: Settings, *, relay_roles: Sequence[str] = (), app_roles: Sequence[str] = ()
) -> str:
    """The grants as a SQL script, for psql or a migration tool."""
    blocks = statements(settings, relay_roles=relay_roles, app_roles=app_roles)
    header = (
        f"-- outbox-relay grants on {settings.schema}.{settings.table} ({settings.mode} mode);"
        " run as the outbox's owner (REPLICATION, and restricting"
        " pg_logical_emit_message, need a superuser)."
    )
    return "\n\n".join([header, *(block.as_string() for block in blocks)]) + "\n"


def apply(
    settings: Settings, *, relay_roles: Sequence[str] = (), app_roles: Sequence[str] = ()
) -> None:
    """Run the grants on ``settings.database_url``, all or nothing."""
    blocks = statements(settings, relay_roles=relay_roles, app_roles=app_roles)
    if not settings.database_url:
        raise ConfigError("no database URL: set --database-url or RELAY_DATABASE_URL")
    try:
        with psycopg.connect(settings.conninfo, connect_timeout=10) as conn:
            for block in blocks:
                conn.execute(block)
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot connect to the database: {first_line(exc)}") from None
    except psycopg.Error as exc:
        raise DatabaseError(f"grants failed: {first_line(exc)}") from None
