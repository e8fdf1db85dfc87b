"""The project's own exceptions.

Errors from psycopg, aiokafka and the operating system are translated into these at the
boundary, so the CLI can turn every one of them into a single line and an exit code.
"""

from __future__ import annotations

from relay import redact


class RelayError(Exception):
    """Base class of every error outbox-relay raises on purpose."""

    #: The process exit code the CLI uses for this error.
    exit_code: int = 1


class ConfigError(RelayError):
    """A setting is unknown, missing or has an invalid value."""

    exit_code = 2


class DatabaseError(RelayError):
    """PostgreSQL could not be reached or refused what we asked."""


class PermanentDatabaseError(DatabaseError):
    """PostgreSQL refused the connection for a reason retrying alone will not fix.

    Wrong password, missing database or role, no pg_hba.conf entry: the relay still
    retries (the database may be created after the sidecar starts), but says what it is.
    """

    #: What is wrong, in a few words ("authentication failed").
    reason: str = ""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class BrokerError(RelayError):
    """The Kafka cluster could not be reached or refused what we asked."""


class BrokerCapabilityError(BrokerError):
    """The broker lacks something the settings ask for (the idempotent producer)."""


class MigrationError(RelayError):
    """The outbox schema could not be installed or is not what we expect."""


class InvalidEventError(RelayError, ValueError):
    """An event cannot be written to the outbox (bad topic, payload or headers)."""

    exit_code = 2


class MissingEventIdError(RelayError, ValueError):
    """A consumed record has no usable ``event_id`` header, so the inbox cannot claim it."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (libpq messages span lines).

    Remembered secrets are scrubbed: libpq echoes parts of malformed URLs.
    """
    for line in str(exc).splitlines():
        if line.strip():
            return redact.scrub(line.strip())
    return type(exc).__name__
