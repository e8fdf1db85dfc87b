"""The ``outbox-relay`` command line: parses, wires, and turns errors into one line."""

from __future__ import annotations

import asyncio

import click

from relay import admin_cli, config, logs, migrate, roles, run
from relay.config import Settings
from relay.demo import demo_command
from relay.errors import ConfigError
from relay.inbox.cli import inbox_group
from relay.options import ErrorReportingGroup, echo_values, with_settings
from relay.slot_cli import slot_group


@click.group(cls=ErrorReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="outbox-relay")
def main() -> None:
    """Move events from a PostgreSQL outbox table to Kafka, at least once, in per-key order.

    \b
    Quick start:
      outbox-relay migrate --database-url postgresql://app@db/app
      outbox-relay run --database-url postgresql://relay@db/app --bootstrap-servers kafka:9092

    Every option can also be set with a RELAY_* environment variable or a TOML file
    (--config); run `outbox-relay config show` to see what is in effect.
    """


@main.group(name="config")
def config_group() -> None:
    """Inspect the effective configuration."""


@config_group.command(name="show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of key = value.")
@with_settings
def config_show(settings: Settings, *, as_json: bool) -> None:
    """Print the effective settings, secrets masked.

    \b
    Example:
      RELAY_MODE=wal outbox-relay config show --config relay.toml
    """
    values = config.shown(settings)
    echo_values(values, as_json=as_json)


@main.command(name="migrate")
@click.option("--print-sql", is_flag=True, help="Print the SQL instead of applying it.")
@with_settings
def migrate_command(settings: Settings, *, print_sql: bool) -> None:
    """Add the outbox (table, indexes, functions, publication) to a database.

    Applies the pending migrations, each in a transaction, under an advisory lock:
    running it twice, or twice at once, is safe. --print-sql prints the same SQL for
    Alembic, Flyway or Liquibase users.

    \b
    Examples:
      outbox-relay migrate --database-url postgresql://app@db/app
      outbox-relay migrate --schema events --print-sql > V1__outbox.sql
    """
    if print_sql:
        click.echo(migrate.script(settings), nl=False)
        return
    if not settings.database_url:
        raise ConfigError("no database URL: set --database-url or RELAY_DATABASE_URL")
    applied = migrate.apply(settings)
    if applied:
        for migration in applied:
            click.echo(f"applied {migration.version:04d}_{migration.name}")
    else:
        click.echo(f"{settings.schema}.{settings.table} is up to date")


@main.command(name="grants")
@click.option(
    "--relay-role", "relay_roles", multiple=True, metavar="ROLE", help="The relay's role."
)
@click.option(
    "--app-role", "app_roles", multiple=True, metavar="ROLE", help="A service's role (repeat)."
)
@click.option("--apply", "apply_now", is_flag=True, help="Run the grants instead of printing.")
@with_settings
def grants_command(
    settings: Settings, *, relay_roles: tuple[str, ...], app_roles: tuple[str, ...], apply_now: bool
) -> None:
    """Print (or --apply) least-privilege grants on the outbox.

    The relay's role may read, update and delete outbox rows (and, with --mode wal,
    replicate); services' roles may only insert events. The roles must exist.

    \b
    Examples:
      outbox-relay grants --relay-role relay --app-role orders_service
      outbox-relay grants --mode wal --relay-role relay --apply --database-url ...
    """
    if apply_now:
        roles.apply(settings, relay_roles=relay_roles, app_roles=app_roles)
        click.echo(f"granted on {settings.schema}.{settings.table}")
    else:
        click.echo(roles.script(settings, relay_roles=relay_roles, app_roles=app_roles), nl=False)


@main.command(name="run")
@with_settings
def run_command(settings: Settings) -> None:
    """Relay the outbox to Kafka until SIGTERM: at least once, in per-key order.

    Several relays may run against one outbox: one leads (a PostgreSQL advisory lock),
    the others stand by and take over within seconds. SIGTERM or SIGINT finishes the
    batch in flight and exits 0 within --shutdown-timeout.

    \b
    Examples:
      outbox-relay run --database-url postgresql://relay@db/app --bootstrap-servers kafka:9092
      outbox-relay run --mode wal --topic-template 'outbox.{aggregate_type}'
    """
    logs.configure(settings.log_level, settings.log_format)
    asyncio.run(run.serve(settings))


main.add_command(demo_command)
main.add_command(slot_group)
main.add_command(inbox_group)


for _command in admin_cli.COMMANDS:
    main.add_command(_command)
