"""``outbox-relay slot``: inspect or drop the replication slot of WAL mode."""

from __future__ import annotations

from typing import Any

import click
import psycopg

from relay.config import Settings
from relay.errors import ConfigError, DatabaseError, first_line
from relay.options import echo_values, with_settings
from relay.slot import drop_slot, slot_status


def _connect(settings: Settings) -> psycopg.Connection[Any]:
    if not settings.database_url:
        raise ConfigError("no database URL: set --database-url or RELAY_DATABASE_URL")
    try:
        return psycopg.connect(settings.conninfo, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL: {first_line(exc)}") from None


@click.group(name="slot")
def slot_group() -> None:
    """Inspect or drop the replication slot of WAL mode."""


@slot_group.command(name="status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_settings
def slot_status_command(settings: Settings, *, as_json: bool) -> None:
    """Show the slot: active or not, confirmed position, WAL it keeps on the server.

    Exits 1 when the slot does not exist.

    \b
    Example:
      outbox-relay slot status --slot-name outbox_relay --database-url postgresql://relay@db/app
    """
    with _connect(settings) as conn:
        status = slot_status(conn, settings.slot_name)
    if status is None:
        raise DatabaseError(f"replication slot {settings.slot_name} does not exist")
    values = status.as_json()
    echo_values(values, as_json=as_json)


@slot_group.command(name="drop")
@click.option("--yes", is_flag=True, help="Really drop it (the server forgets its position).")
@with_settings
def slot_drop_command(settings: Settings, *, yes: bool) -> None:
    """Drop the slot, e.g. before leaving WAL mode, so it stops keeping WAL.

    The relay never drops its slot by itself. After a drop, the next start in WAL mode
    creates a new slot and first publishes the rows still pending in the table
    (--on-sent mark or delete), so switching modes loses nothing. Refused while a relay
    streams from the slot.

    \b
    Example:
      outbox-relay slot drop --yes --slot-name outbox_relay
    """
    if not yes:
        raise ConfigError(f"dropping slot {settings.slot_name} needs --yes")
    with _connect(settings) as conn:
        dropped = drop_slot(conn, settings.slot_name)
    if not dropped:
        raise DatabaseError(f"replication slot {settings.slot_name} does not exist")
    click.echo(f"dropped replication slot {settings.slot_name}")
