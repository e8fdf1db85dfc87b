"""Refused connections are named: libpq gives no SQLSTATE, only the server's FATAL text."""

from __future__ import annotations

import psycopg
import pytest

from relay import connection
from relay.errors import PermanentDatabaseError

PREFIX = 'connection failed: connection to server at "10.0.0.5", port 5432 failed: FATAL:  '


@pytest.mark.parametrize(
    ("server_says", "reason"),
    [
        ('password authentication failed for user "relay"', "authentication failed"),
        ('database "app" does not exist', "database does not exist"),
        ('role "relay" does not exist', "role does not exist"),
        ('no pg_hba.conf entry for host "10.0.0.9", user "relay"', "not allowed by pg_hba.conf"),
        ('role "relay" is not permitted to log in', "role may not log in"),
        ('permission denied for database "app"', "no CONNECT privilege on the database"),
    ],
)
def test_permanent_refusals_are_named_with_what_to_check(server_says: str, reason: str) -> None:
    error = connection.connect_error(psycopg.OperationalError(PREFIX + server_says))
    assert isinstance(error, PermanentDatabaseError)
    assert error.reason == reason
    assert str(error).startswith(f"cannot connect to PostgreSQL: {reason}: {server_says} (")


@pytest.mark.parametrize(
    "text",
    [
        'connection failed: connection to server at "10.0.0.5", port 5432 failed: refused',
        "connection failed: timeout expired",
        PREFIX + "the database system is starting up",
    ],
)
def test_transient_failures_stay_plain(text: str) -> None:
    error = connection.connect_error(psycopg.OperationalError(text))
    assert not isinstance(error, PermanentDatabaseError)
    assert str(error).startswith("cannot connect to PostgreSQL: connection failed")
