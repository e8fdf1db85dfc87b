"""Click options derived from `relay.config.OPTIONS`, shared by every command."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import click

from relay import config, redact
from relay.config import Settings
from relay.errors import RelayError

P = ParamSpec("P")
R = TypeVar("R")


class ErrorReportingGroup(click.Group):
    """A click group that reports our own errors as one line and an exit code."""

    def invoke(self, ctx: click.Context) -> object:
        """Run the command; print a `RelayError` as one line and exit with its code."""
        try:
            return super().invoke(ctx)
        except RelayError as exc:
            click.echo(f"outbox-relay: error: {redact.scrub(str(exc))}", err=True)
            ctx.exit(exc.exit_code)


def with_settings(
    command: Callable[Concatenate[Settings, P], R],
) -> Callable[P, R]:
    """Give a command every setting as a flag and pass it the merged `Settings`.

    Precedence: flag > ``RELAY_*`` environment variable > ``--config`` file > default.
    """

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        flags = {option.name: kwargs.pop(option.name, None) for option in config.OPTIONS}
        config_file = kwargs.pop("config_file", None)
        settings = config.load_settings(
            flags, os.environ, Path(str(config_file)) if config_file else None
        )
        return command(settings, *args, **kwargs)

    decorated: Callable[..., R] = wrapper
    for option in reversed(config.OPTIONS):
        decorated = click.option(
            option.flag,
            option.name,
            default=None,
            metavar=option.name.upper() if not option.choices else None,
            help=f"{option.help} [env {option.env}]",
        )(decorated)
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        envvar="RELAY_CONFIG",
        help="TOML file with settings (flags and RELAY_* variables override it).",
    )(decorated)


def echo_values(values: Mapping[str, object], *, as_json: bool) -> None:
    """Print a flat mapping as indented JSON, or as ``key = value`` lines (values in JSON)."""
    if as_json:
        click.echo(json.dumps(values, indent=2))
        return
    for key, value in values.items():
        click.echo(f"{key} = {json.dumps(value)}")
