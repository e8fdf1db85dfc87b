"""Settings: one definition per option, read from flags, `RELAY_*` variables and a TOML file.

Precedence is flag > environment > file > default. Every option is declared once in
`OPTIONS`; the CLI flags, the environment variable names, the TOML keys and
`config show` are all derived from that list, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import psycopg.conninfo

from relay import decisions, redact
from relay.errors import ConfigError

ENV_PREFIX: Final = "RELAY_"
#: Environment variables with the prefix that are not settings.
ENV_NOT_SETTINGS: Final = frozenset({"RELAY_CONFIG"})
#: Kubernetes service links for a Service named ``relay`` or ``relay-<x>`` (kubelet
#: injects them unless ``enableServiceLinks: false``): ``RELAY_SERVICE_HOST``,
#: ``RELAY_SERVICE_PORT[_<NAME>]``, ``RELAY_PORT_<n>_TCP[_PROTO|_PORT|_ADDR]``, and
#: ``RELAY_PORT`` / ``RELAY_HTTP_PORT`` holding ``tcp://10.0.0.1:80``.
_SERVICE_LINK_NAME: Final = re.compile(
    r"^RELAY(?:_[A-Z0-9_]+)?_(?:SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?"
    r"|PORT_\d+_(?:TCP|UDP|SCTP)(?:_PROTO|_PORT|_ADDR)?)$"
)
_SERVICE_LINK_VALUE: Final = re.compile(r"^(?:tcp|udp|sctp)://[^\s/]+:\d+$")
#: PostgreSQL's NAMEDATALEN - 1: the longest identifier, in bytes.
MAX_NAME_BYTES: Final = 63
#: The longest suffix of the objects named after the outbox table (``<table>_headers_object``).
OWN_NAME_SUFFIX_BYTES: Final = len("_headers_object")
MIN_POLL_INTERVAL_S: Final = 0.01
#: Durations beyond a century are typing mistakes (and overflow dates and timers).
MAX_DURATION_S: Final = 100 * 365 * 86400.0
MAX_LOCK_ID: Final = 2**63 - 1
#: The batch size goes to LIMIT, which takes a bigint.
MAX_BATCH_SIZE: Final = 2**63 - 1
MAX_PORT: Final = 65535
#: Kafka types ``batch.size``, ``max.request.size`` and ``request.timeout.ms`` as int32
#: (the produce request carries the timeout as one) and ``linger.ms`` as int64.
MAX_KAFKA_INT: Final = 2**31 - 1
MAX_KAFKA_LONG: Final = 2**63 - 1
#: The smallest record the relay sends, as Kafka sizes it against ``max.request.size``: a
#: record batch's 61-byte header, at most 21 bytes of record overhead, the varints of a
#: null key, a null value and the header count (1 each) and the ``event_id`` header
#: (1 + 8 + 1 + 36 for its UUID). A smaller request size can never hold a record.
MIN_KAFKA_REQUEST_SIZE: Final = 61 + 21 + 3 + 46


class Mode(enum.StrEnum):
    """How the relay finds new events."""

    POLL = "poll"
    WAL = "wal"


class OnSent(enum.StrEnum):
    """What happens to an outbox row once Kafka acknowledged its event."""

    MARK = "mark"
    DELETE = "delete"
    NONE = "none"


class PoisonPolicy(enum.StrEnum):
    """What happens to later events of a key whose event was parked."""

    PARK = "park"  # they wait behind the parked event: order is never broken
    SKIP = "skip"  # they go on: progress matters more than order for this outbox


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """The effective configuration of one relay process or CLI command."""

    database_url: str = ""
    bootstrap_servers: str = "localhost:9092"
    mode: Mode = Mode.POLL
    schema: str = "public"
    table: str = "outbox"
    on_sent: OnSent = OnSent.MARK
    batch_size: int = 2000
    poll_interval: float = 1.0
    poison: PoisonPolicy = PoisonPolicy.PARK
    park_after_attempts: int = 5
    max_payload_bytes: int = 1_000_000
    topic_template: str = ""
    slot_name: str = "outbox_relay"
    publication: str = "outbox_pub"
    message_prefix: str = ""
    #: Comma-separated topics table-less messages may publish to (others are parked).
    message_topics: str = ""
    heartbeat_interval: float = 10.0
    lock_id: int = 0
    http_port: int = 0
    http_host: str = "127.0.0.1"
    shutdown_timeout: float = 30.0
    log_level: str = "info"
    log_format: str = "auto"
    kafka_client_id: str = "outbox-relay"
    kafka_acks: str = "all"
    kafka_enable_idempotence: bool = True
    kafka_compression: str = "none"
    kafka_linger_ms: int = 5
    kafka_max_batch_bytes: int = 1_048_576
    kafka_max_request_size: int = 1_048_576
    kafka_request_timeout_ms: int = 30_000
    kafka_auto_create_topics: bool = True
    kafka_topic_error_ttl: float = 10.0
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    kafka_ssl_cafile: str = ""
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""
    kafka_ssl_password: str = ""

    @property
    def conninfo(self) -> str:
        """The database URL in the form libpq takes (no SQLAlchemy driver suffix)."""
        return libpq_url(self.database_url)


@dataclasses.dataclass(frozen=True, slots=True)
class Option:
    """How one setting is parsed, described and shown."""

    name: str
    help: str
    parse: Callable[[str], Any]
    secret: bool = False
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. ``--database-url``."""
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        """The environment variable, e.g. ``RELAY_DATABASE_URL``."""
        return ENV_PREFIX + self.name.upper()


def _text(value: str) -> str:
    return value


def _int(minimum: int, maximum: int | None = None, why: str = "") -> Callable[[str], int]:
    """A parser of integers from `minimum` to `maximum`; `why` explains the minimum."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"expected an integer, got {value[:40]!r}") from None
        if number < minimum:
            raise ValueError(f"must be at least {minimum}{why}, got {number}")
        if maximum is not None and number > maximum:
            raise ValueError(f"must be at most {maximum}, got {number}")
        return number

    return parse


def _seconds_at_least(minimum_s: float) -> Callable[[str], float]:
    def parse(value: str) -> float:
        if not _DURATION.match(value):
            raise ValueError(
                f"expected seconds or a duration like 500ms, 5s, 2m, got {value[:40]!r}"
            )
        seconds = parse_duration(value)  # ValueError when longer than a century
        if seconds < minimum_s:
            raise ValueError(f"must be at least {minimum_s:g}s, got {value!r}")
        return seconds

    return parse


_seconds = _seconds_at_least(0.0)


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _choice(*choices: str, upper: bool = False) -> Callable[[str], str]:
    def parse(value: str) -> str:
        normalised = value.upper() if upper else value.lower()
        if normalised not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return normalised

    return parse


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


def _identifier(value: str) -> str:
    # Identifiers are always quoted with psycopg.sql.Identifier; this check only keeps
    # names that users can also type in psql without quoting, and that fit NAMEDATALEN.
    if not _IDENTIFIER.match(value):
        raise ValueError(
            f"expected a plain SQL name (letters, digits, _; at most 63 characters), "
            f"got {value[:80]!r}"
        )
    return value


def _schema_name(value: str) -> str:
    _identifier(value)
    # CREATE SCHEMA refuses the prefix, and tables cannot go into the system schemas.
    if value.startswith("pg_"):
        raise ValueError(f"names starting with pg_ are PostgreSQL's own, got {value!r}")
    return value


def _table_name(value: str) -> str:
    # The outbox's own objects are named <table>_<suffix> and must fit NAMEDATALEN too,
    # or PostgreSQL would truncate them to names that collide.
    _identifier(value)
    longest = MAX_NAME_BYTES - OWN_NAME_SUFFIX_BYTES
    if len(value) > longest:
        raise ValueError(
            f"at most {longest} characters (its objects are named {value[:10]}..._headers_object "
            f"and PostgreSQL names stop at {MAX_NAME_BYTES}), got {len(value)}"
        )
    return value


_SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")


def _slot_name(value: str) -> str:
    # What PostgreSQL's ReplicationSlotValidateName accepts.
    if not _SLOT_NAME.match(value):
        raise ValueError(
            "expected lower-case letters, digits and _ (at most 63), as PostgreSQL "
            f"requires of slot names, got {value[:80]!r}"
        )
    return value


def _topic_names(value: str) -> str:
    for topic in (name.strip() for name in value.split(",")):
        if topic and not decisions.valid_topic(topic):
            raise ValueError(
                f"{topic[:80]!r} is not a Kafka topic name (1-249 letters, digits, '.', '_' or '-')"
            )
    return value


_BOOTSTRAP_SERVER = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(\d+))?$")


def _bootstrap_servers(value: str) -> str:
    servers = [server.strip() for server in value.split(",")]
    if not any(servers):
        raise ValueError("expected host:port[,host:port...], got nothing")
    for server in servers:
        match = _BOOTSTRAP_SERVER.match(server)
        if not match:
            raise ValueError(f"expected host:port, got {server[:80]!r}")
        if match[1] is not None and not 1 <= int(match[1]) <= MAX_PORT:
            raise ValueError(f"port must be 1-{MAX_PORT}, got {server[:80]!r}")
    return ",".join(servers)


def _host(value: str) -> str:
    if not re.match(r"^(?:[A-Za-z0-9_.:-]+)$", value):
        raise ValueError(f"expected a host name or address, got {value[:80]!r}")
    return value


def _database_url(value: str) -> str:
    if value:
        libpq_url(value)  # raises on a malformed URL
    return value


def _topic_template(value: str) -> str:
    fields = set(re.findall(r"\{([^{}]*)\}", value))
    unknown = fields - TOPIC_TEMPLATE_FIELDS
    if unknown:
        raise ValueError(
            f"unknown field {{{min(unknown)}}}; "
            f"use {', '.join('{' + f + '}' for f in sorted(TOPIC_TEMPLATE_FIELDS))}"
        )
    try:  # what the regex cannot see (a lone brace) fails here, not at the first event
        value.format_map(dict.fromkeys(TOPIC_TEMPLATE_FIELDS, "x"))
    except (ValueError, KeyError, IndexError) as exc:
        raise ValueError(f"not a valid template ({exc})") from None
    return value


#: Row fields a topic template may use (the Debezium "route by field" idea).
TOPIC_TEMPLATE_FIELDS: Final = frozenset({"topic", "event_type", "aggregate_type"})

OPTIONS: Final[tuple[Option, ...]] = (
    Option(
        "database_url",
        "PostgreSQL URL, e.g. postgresql://relay@db/app",
        _database_url,
        secret=True,
    ),
    Option(
        "bootstrap_servers",
        "Kafka bootstrap servers, comma-separated host:port",
        _bootstrap_servers,
    ),
    Option("mode", "poll the outbox table, or tail the WAL", _choice("poll", "wal")),
    Option("schema", "schema of the outbox table", _schema_name),
    Option("table", "name of the outbox table", _table_name),
    Option(
        "on_sent",
        "after Kafka acknowledged an event: mark the row sent, delete it, or (wal) leave it",
        _choice("mark", "delete", "none"),
    ),
    Option("batch_size", "events fetched and published per batch", _int(1, MAX_BATCH_SIZE)),
    Option(
        "poll_interval",
        "seconds between polls when no notification comes (at least 10ms)",
        _seconds_at_least(MIN_POLL_INTERVAL_S),
    ),
    Option(
        "poison",
        "park: later events of a parked event's key wait; skip: they go on",
        _choice("park", "skip"),
    ),
    Option("park_after_attempts", "failed publish attempts before an event is parked", _int(1)),
    Option(
        "max_payload_bytes",
        "largest payload the outbox accepts (migrate sets the CHECK from it)",
        _int(1),
    ),
    Option(
        "topic_template",
        "route events to a topic built from row fields, e.g. 'outbox.{aggregate_type}'",
        _topic_template,
    ),
    Option("slot_name", "logical replication slot used in wal mode", _slot_name),
    Option("publication", "publication of the outbox table used in wal mode", _identifier),
    Option(
        "message_prefix",
        "relay pg_logical_emit_message events with this prefix (wal mode; empty: off)",
        _text,
    ),
    Option(
        "message_topics",
        "comma-separated topics table-less messages may publish to; others are parked",
        _topic_names,
    ),
    Option(
        "heartbeat_interval",
        "seconds between WAL heartbeats that keep the slot moving",
        _seconds_at_least(0.1),
    ),
    Option(
        "lock_id",
        "unused since leadership is a lease row (migration 0003); accepted for old configs",
        _int(0, MAX_LOCK_ID),
    ),
    Option("http_port", "port of /healthz, /readyz and /metrics (0: off)", _int(0, MAX_PORT)),
    Option(
        "http_host",
        "address the HTTP endpoints listen on (0.0.0.0: every interface, as in a container)",
        _host,
    ),
    Option("shutdown_timeout", "seconds to finish the batch in flight on SIGTERM", _seconds),
    Option(
        "log_level", "debug, info, warning or error", _choice("debug", "info", "warning", "error")
    ),
    Option(
        "log_format",
        "auto (console on a TTY, else JSON), json or console",
        _choice("auto", "json", "console"),
    ),
    Option("kafka_client_id", "client id the relay announces to Kafka", _text),
    Option("kafka_acks", "acknowledgements Kafka waits for: all, 1 or 0", _choice("all", "1", "0")),
    Option("kafka_enable_idempotence", "idempotent producer (keeps order through retries)", _bool),
    Option(
        "kafka_compression",
        "record batch compression",
        _choice("none", "gzip", "snappy", "lz4", "zstd"),
    ),
    Option(
        "kafka_linger_ms",
        "milliseconds the producer waits to fill a batch",
        _int(0, MAX_KAFKA_LONG),
    ),
    Option(
        "kafka_max_batch_bytes",
        "largest record batch per partition, in bytes (the request size caps it)",
        _int(1, MAX_KAFKA_INT),
    ),
    Option(
        "kafka_max_request_size",
        f"largest produce request (and record), in bytes (at least {MIN_KAFKA_REQUEST_SIZE})",
        _int(
            MIN_KAFKA_REQUEST_SIZE,
            MAX_KAFKA_INT,
            " (the size of the smallest record: batch header, record overhead, event_id)",
        ),
    ),
    Option(
        "kafka_request_timeout_ms",
        "milliseconds before a produce request times out",
        _int(1, MAX_KAFKA_INT),
    ),
    Option(
        "kafka_auto_create_topics",
        "ask the broker to create a missing topic (false: never; its events are parked)",
        _bool,
    ),
    Option(
        "kafka_topic_error_ttl",
        "seconds a topic the broker called unknown, invalid or not authorised stays refused",
        _seconds,
    ),
    Option(
        "kafka_security_protocol",
        "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
        _choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL", upper=True),
    ),
    Option(
        "kafka_sasl_mechanism",
        "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
        _choice("", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", upper=True),
    ),
    Option("kafka_sasl_username", "SASL user name", _text),
    Option("kafka_sasl_password", "SASL password", _text, secret=True),
    Option("kafka_ssl_cafile", "CA bundle that signs the brokers' certificates", _text),
    Option("kafka_ssl_certfile", "client certificate for mutual TLS", _text),
    Option("kafka_ssl_keyfile", "client private key for mutual TLS", _text),
    Option("kafka_ssl_password", "password of the client private key", _text, secret=True),
)

OPTIONS_BY_NAME: Final = {option.name: option for option in OPTIONS}
_ENV_OPTION_NAMES: Final = frozenset(option.env for option in OPTIONS)
assert set(OPTIONS_BY_NAME) == {f.name for f in dataclasses.fields(Settings)}  # noqa: S101

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS_S: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str) -> float:
    """Seconds in a duration such as ``1.5``, ``500ms``, ``30s``, ``2m``, ``7d``."""
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"malformed duration {value[:40]!r}; use e.g. 500ms, 30s, 15m, 2h, 7d")
    number, unit = match.groups()
    seconds = float(number) * _DURATION_UNITS_S[unit or "s"]
    if not seconds <= MAX_DURATION_S:  # also refuses inf, which float() gives for 1e999
        raise ValueError(f"duration {value[:40]!r} is longer than 100 years")
    return seconds


def libpq_url(url: str) -> str:
    """Check a PostgreSQL URL and return it without an SQLAlchemy ``+driver`` suffix."""
    url = re.sub(r"^postgres(?:ql)?\+\w+://", "postgresql://", url)
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
    if scheme and scheme[1] not in {"postgresql", "postgres"}:
        raise ConfigError(f"malformed database URL: expected postgresql://..., got {scheme[0]}...")
    secrets = redact.passwords(url)
    if scheme and secrets:
        # libpq would split the password at the character and echo the rest as a host,
        # port or percent-encoded token: refuse first, naming only the character.
        char = redact.unencoded(secrets[0])
        if char is not None:
            encoded = f"%{ord(char):02X}" if char != "%" else "%25"
            raise ConfigError(
                f"malformed database URL: the password has an unencoded {char!r}; "
                f"percent-encode it ({char} as {encoded})"
            )
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unparsable"
        # libpq quotes the offending token, or the whole URL: never echo a secret part.
        reason = re.sub(r'"([^"]*)"', lambda m: f'"{_without(m[1], secrets)}"', reason)
        for secret in secrets:
            reason = reason.replace(secret, redact.MASK)
        raise ConfigError(f"malformed database URL: {reason}") from None
    return url


def _without(token: str, secrets: list[str]) -> str:
    """A token libpq quoted, masked when it holds a piece of a secret."""
    if not any(redact.overlaps(token, secret) for secret in secrets):
        return token
    masked = redact.mask_url(token)
    if any(secret in masked for secret in secrets) or masked == token:
        return redact.MASK
    return masked


def _unknown(name: str, known: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"unknown setting {name!r} in {where}{hint}")


def _parse(option: Option, raw: object, where: str) -> object:
    text = str(raw).lower() if isinstance(raw, bool) else str(raw)
    if option.secret:
        if option.name == "database_url":
            redact.remember_url(text)
        else:
            redact.remember(text)
    try:
        value = option.parse(text)
    except (ValueError, ConfigError) as exc:
        raise ConfigError(f"invalid {option.name} in {where}: {exc}") from None
    return value


def read_file(path: Path) -> dict[str, object]:
    """Read a TOML settings file: top-level keys, or a ``[kafka]`` table for Kafka options."""
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not valid TOML: not UTF-8 at byte {exc.start}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    flat: dict[str, object] = {}
    for key, value in document.items():
        if key == "kafka" and isinstance(value, dict):
            for sub_key, sub_value in value.items():
                flat["kafka_" + sub_key.replace("-", "_")] = sub_value
        else:
            flat[key.replace("-", "_")] = value
    return flat


def load_settings(
    flags: Mapping[str, object | None],
    environ: Mapping[str, str],
    config_file: Path | None = None,
) -> Settings:
    """Merge flags, ``RELAY_*`` variables, the TOML file and defaults into `Settings`.

    `flags` holds option names to values, ``None`` for flags not given on the command line.
    """
    values: dict[str, Any] = {}
    if config_file is not None:
        for key, raw in read_file(config_file).items():
            if key not in OPTIONS_BY_NAME:
                raise _unknown(key, list(OPTIONS_BY_NAME), str(config_file))
            values[key] = _parse(OPTIONS_BY_NAME[key], raw, str(config_file))
    env_names = {option.env: option for option in OPTIONS}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key in ENV_NOT_SETTINGS:
            continue
        if is_service_link(key, raw):
            continue
        if key not in env_names:
            raise _unknown(key, list(env_names), "the environment")
        option = env_names[key]
        values[option.name] = _parse(option, raw, f"${key}")
    for key, raw in flags.items():
        if raw is None:
            continue
        option = OPTIONS_BY_NAME[key]
        values[key] = _parse(option, raw, option.flag)
    return _build(values)


def is_service_link(name: str, value: str) -> bool:
    """True for a variable Kubernetes injects for a Service, not a setting.

    Recognised by its shape: a Service named ``relay`` gives ``RELAY_PORT=tcp://...``,
    one named ``relay-http`` gives ``RELAY_HTTP_PORT=tcp://...`` (so the value, a URL,
    tells it from ``--http-port``).
    """
    if _SERVICE_LINK_VALUE.match(value) and name.endswith("_PORT"):
        return True
    return name not in _ENV_OPTION_NAMES and bool(_SERVICE_LINK_NAME.match(name))


def service_links(environ: Mapping[str, str]) -> list[str]:
    """The names of the Kubernetes service-link variables `load_settings` ignores."""
    return sorted(
        key
        for key, value in environ.items()
        if key.startswith(ENV_PREFIX) and is_service_link(key, value)
    )


def _build(values: dict[str, Any]) -> Settings:
    enums: dict[str, Callable[[Any], Any]] = {
        "mode": Mode,
        "on_sent": OnSent,
        "poison": PoisonPolicy,
    }
    converted = {key: enums[key](value) if key in enums else value for key, value in values.items()}
    settings = Settings(**converted)
    if len(f"{settings.schema}.{settings.table}".encode()) > MAX_NAME_BYTES:
        raise ConfigError(
            f"invalid table: {settings.schema}.{settings.table} is longer than "
            f"{MAX_NAME_BYTES} bytes, the longest notification channel PostgreSQL accepts"
        )
    if settings.on_sent is OnSent.NONE and settings.mode is Mode.POLL:
        raise ConfigError(
            "invalid on_sent: 'none' works only with --mode wal (poll mode reads sent_at)"
        )
    if settings.on_sent is OnSent.NONE and settings.poison is PoisonPolicy.PARK:
        # Without per-row state nothing ever re-reads the table: the events held behind
        # a parked key would be skipped by the slot and never published after a release.
        raise ConfigError(
            "invalid on_sent: 'none' needs --poison skip (with park, the events held behind "
            "a parked key could never be published after their release)"
        )
    return settings


def mask_url(url: str) -> str:
    """The URL (or conninfo string) with its password replaced by ``***``."""
    return redact.mask_url(url)


def shown(settings: Settings) -> dict[str, object]:
    """The settings as plain values, secrets masked, for `config show`."""
    result: dict[str, object] = {}
    for option in OPTIONS:
        value = getattr(settings, option.name)
        if isinstance(value, enum.Enum):
            value = value.value
        if option.secret and value:
            value = mask_url(value) if option.name == "database_url" else "***"
        result[option.name] = value
    return result
