"""``outbox-relay inbox``: the inbox's migration kit and operator commands.

Exit codes as in the other operator commands: 0 done; 1 the database could not be used;
2 bad input.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import click

from relay import admin, config
from relay.admin_cli import format_age, render_table
from relay.errors import ConfigError
from relay.inbox import admin as inbox_admin
from relay.inbox import migrate as inbox_migrate

F = TypeVar("F", bound=Callable[..., Any])


def _where(command: F) -> F:
    """The options that say which inbox: database, schema, table."""
    for option in reversed(
        (
            click.option(
                "--database-url",
                envvar="RELAY_DATABASE_URL",
                default="",
                help="The consuming service's database. [env RELAY_DATABASE_URL]",
            ),
            click.option(
                "--schema",
                envvar="RELAY_INBOX_SCHEMA",
                default="public",
                show_default=True,
                help="Schema of the inbox tables. [env RELAY_INBOX_SCHEMA]",
            ),
            click.option(
                "--table",
                envvar="RELAY_INBOX_TABLE",
                default="inbox",
                show_default=True,
                help="Processed-events table (the others are named after it). "
                "[env RELAY_INBOX_TABLE]",
            ),
        )
    ):
        command = option(command)
    return command


def _check_names(schema: str, table: str) -> None:
    # The same rule as the outbox's --schema and --table.
    for name, value in (("schema", schema), ("table", table)):
        try:
            config.OPTIONS_BY_NAME[name].parse(value)
        except ValueError as exc:
            raise ConfigError(f"invalid --{name}: {exc}") from None


def _need_url(database_url: str) -> str:
    if not database_url:
        raise ConfigError("no database URL: set --database-url or RELAY_DATABASE_URL")
    return database_url


@click.group(name="inbox")
def inbox_group() -> None:
    """The consumer side: idempotent consumers (see relay.inbox)."""


@inbox_group.command(name="migrate")
@_where
@click.option("--print-sql", is_flag=True, help="Print the SQL instead of applying it.")
def migrate_command(database_url: str, schema: str, table: str, *, print_sql: bool) -> None:
    """Add the inbox tables (processed events, parked records) to a service's database.

    Versioned migrations, each in a transaction, under an advisory lock: running it
    twice, or twice at once, is safe.

    \b
    Examples:
      outbox-relay inbox migrate --database-url postgresql://billing@db/billing
      outbox-relay inbox migrate --print-sql > V2__inbox.sql
    """
    _check_names(schema, table)
    if print_sql:
        click.echo(inbox_migrate.script(schema, table), nl=False)
        return
    applied = inbox_migrate.apply(_need_url(database_url), schema, table)
    for migration in applied:
        click.echo(f"applied inbox {migration.version:04d}_{migration.name}")
    if not applied:
        click.echo(f"{schema}.{table} is up to date")


@inbox_group.command(name="status")
@_where
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_command(database_url: str, schema: str, table: str, *, as_json: bool) -> None:
    """Per consumer: processed in the last minute and hour, parked, oldest parked.

    \b
    Exit codes: 0 done; 1 database error; 2 bad input.
    """
    _check_names(schema, table)
    rows = inbox_admin.status(_need_url(database_url), schema, table)
    if as_json:
        click.echo(json.dumps({"consumers": [r.as_json() for r in rows]}, indent=2))
        return
    now = dt.datetime.now(dt.UTC)
    click.echo(
        render_table(
            ["consumer", "processed 1m", "processed 1h", "parked", "oldest parked"],
            [
                [
                    r.consumer,
                    f"{r.processed_last_minute:,}",
                    f"{r.processed_last_hour:,}",
                    f"{r.parked:,}",
                    format_age(
                        (now - r.oldest_parked_at).total_seconds() if r.oldest_parked_at else None
                    ),
                ]
                for r in rows
            ],
        )
    )


@inbox_group.command(name="purge")
@_where
@click.option("--older-than", required=True, metavar="DURATION", help="Retention, e.g. 7d.")
@click.option(
    "--chunk-size",
    type=click.IntRange(1, 100_000),
    default=inbox_admin.PURGE_BATCH_SIZE,
    show_default=True,
    help="Ids deleted per transaction.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
def purge_command(
    database_url: str, schema: str, table: str, *, older_than: str, chunk_size: int, as_json: bool
) -> None:
    """Delete processed ids older than a retention, in short batches.

    Keep the ids at least as long as the broker keeps the records: a record redelivered
    after its id was purged is applied again. Safe beside a running consumer.

    \b
    Exit codes: 0 done (also when nothing was old enough); 1 database error;
    2 bad input (malformed duration).
    """
    _check_names(schema, table)
    seconds = admin.parse_seconds(older_than, "--older-than")
    deleted = inbox_admin.purge(
        _need_url(database_url),
        schema,
        table,
        older_than=dt.timedelta(seconds=seconds),
        batch_size=chunk_size,
    )
    if as_json:
        click.echo(json.dumps({"deleted": deleted}, indent=2))
    else:
        click.echo(f"deleted {deleted:,} processed ids older than {older_than}")


@inbox_group.command(name="grants")
@_where
@click.option(
    "--role",
    "consumer_roles",
    multiple=True,
    required=True,
    metavar="ROLE",
    help="A consuming service's role (repeat).",
)
@click.option("--apply", "apply_now", is_flag=True, help="Run the grants instead of printing.")
def grants_command(
    database_url: str, schema: str, table: str, *, consumer_roles: tuple[str, ...], apply_now: bool
) -> None:
    """Print (or --apply) least-privilege grants on the inbox for consumers' roles.

    A consumer may claim ids and park, read and release its records; it cannot delete
    claims (only `inbox purge`, run by the tables' owner, does).

    \b
    Exit codes: 0 done; 1 database error; 2 bad input.
    """
    _check_names(schema, table)
    blocks = inbox_admin.grants(schema, table, consumer_roles)
    if apply_now:
        inbox_admin.apply_grants(_need_url(database_url), blocks)
        click.echo(f"granted on {schema}.{table}")
    else:
        header = f"-- outbox-relay inbox grants on {schema}.{table}; run as the tables' owner."
        click.echo("\n\n".join([header, *(b.as_string() for b in blocks)]))


def _release(
    verb: str,
    database_url: str,
    schema: str,
    table: str,
    *,
    consumer: str,
    keys: tuple[str, ...],
    event_ids: tuple[str, ...],
    everything: bool,
    as_json: bool,
) -> None:
    _check_names(schema, table)
    if everything == bool(keys or event_ids):
        raise admin.BadInputError("say which records: --key, --event-id, or --all (alone)")
    changed = inbox_admin.release(
        _need_url(database_url),
        schema,
        table,
        consumer=consumer,
        new_state="retry" if verb == "retry" else "skipped",
        keys=keys,
        event_ids=[uuid.UUID(admin.parse_event_id(e)) for e in event_ids],
        everything=everything,
    )
    if not changed:
        raise admin.NothingMatchedError(f"no parked record of {consumer} matches")
    if as_json:
        click.echo(json.dumps({"released" if verb == "retry" else "skipped": changed}, indent=2))
    elif verb == "retry":
        click.echo(f"released {changed:,} parked records; the consumer applies them next")
    else:
        click.echo(f"skipped {changed:,} parked records")


_release_options = (
    click.option("--consumer", required=True, help="The consumer whose records to change."),
    click.option("--key", "keys", multiple=True, metavar="KEY", help="Only this key (repeat)."),
    click.option("--event-id", "event_ids", multiple=True, metavar="UUID", help="Only this event."),
    click.option("--all", "everything", is_flag=True, help="Every parked record."),
    click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON."),
)


def _with_release_options(command: F) -> F:
    for option in reversed(_release_options):
        command = option(command)
    return _where(command)


@inbox_group.command(name="retry")
@_with_release_options
def retry_command(database_url: str, schema: str, table: str, **selection: Any) -> None:  # noqa: ANN401 - click's options
    """Release parked records: the running consumer applies them, in their key's order.

    \b
    Exit codes: 0 released; 1 database error; 2 bad input; 3 nothing matched.
    """
    _release("retry", database_url, schema, table, **selection)


@inbox_group.command(name="skip")
@_with_release_options
def skip_command(database_url: str, schema: str, table: str, **selection: Any) -> None:  # noqa: ANN401 - click's options
    """Give up on parked records: never applied; their key flows again.

    \b
    Exit codes: 0 skipped; 1 database error; 2 bad input; 3 nothing matched.
    """
    _release("skip", database_url, schema, table, **selection)
