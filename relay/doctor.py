"""`outbox-relay doctor`: one checklist of everything a deployment needs.

Facts are gathered first (one database session, one short Kafka metadata exchange),
then each check is a small pure function of those facts returning ok / warn / fail and
the fix, so the decisions are unit-tested without a server. Checks that only WAL mode
needs report ``skip`` in poll mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from relay import admin, connection, decisions, kafka, migrate
from relay import sql as relay_sql
from relay.config import Mode, OnSent, Settings
from relay.errors import ConfigError, first_line
from relay.slot import SlotStatus, max_slot_wal_keep_size, slot_status

BROKER_TIMEOUT_S: Final = 5.0
#: Warn when the WAL a slot may still retain before it is invalidated drops below this
#: share of max_slot_wal_keep_size.
SAFE_WAL_WARN_FRACTION: Final = 0.2
AUTO_CREATE_CONFIG: Final = "auto.create.topics.enable"
_PLAIN_NAME: Final = re.compile(r"^[a-z_][a-z0-9_$]*$")


def sql_name(*parts: str) -> str:
    """``schema.table`` as it can be pasted into psql: quoted when not plain lower case.

    An unquoted ``Events.Outbox`` would be folded to ``events.outbox`` and miss.
    """
    if all(_PLAIN_NAME.match(part) for part in parts):
        return ".".join(parts)
    return sql.Identifier(*parts).as_string(None)


class Level(enum.StrEnum):
    """The outcome of one check."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclasses.dataclass(frozen=True, slots=True)
class Check:
    """One line of the checklist."""

    name: str
    level: Level
    detail: str
    fix: str = ""

    def as_json(self) -> dict[str, str]:
        """The check as plain JSON values."""
        return {
            "name": self.name,
            "level": self.level.value,
            "detail": self.detail,
            "fix": self.fix,
        }


# --- facts ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class DatabaseFacts:
    """What the database says about the outbox and the relay's role."""

    role: str
    database: str
    wal_level: str
    superuser: bool
    replication: bool
    outbox_exists: bool
    #: Migration versions not yet applied; None when the role cannot read the record.
    pending_versions: list[int] | None
    #: (publishes inserts, covers the outbox), or None when the publication is missing.
    publication: tuple[bool, bool] | None
    emit_message_allowed: bool
    schema_usage: bool
    can_select: bool
    can_update: bool
    can_delete: bool
    #: The WAL-mode slot, None when it does not exist.
    slot: SlotStatus | None
    #: The server's ``max_slot_wal_keep_size`` in bytes, -1 for unlimited.
    max_slot_wal_keep_size: int
    #: Topics of pending events, after the topic template.
    pending_topics: frozenset[str]
    #: PUBLIC may call pg_logical_emit_message (every role may emit table-less events).
    emit_message_public: bool = True
    #: Roles that may insert the relay's own columns but not update the outbox.
    roles_beyond_events: tuple[str, ...] = ()
    #: This role may take the leadership lease; None when the lease table is missing.
    can_lead: bool | None = True


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerFacts:
    """What one metadata exchange with the Kafka cluster returned."""

    reachable: bool
    error: str = ""
    topics: frozenset[str] = frozenset()
    brokers: int = 0
    #: ``auto.create.topics.enable`` of a broker; None when it cannot be read.
    auto_create: bool | None = None
    #: Why the broker refused the idempotent producer; None when it did not (or untried).
    idempotence_refused: str | None = None


def connect(settings: Settings) -> psycopg.Connection[Any]:
    """The doctor's own session, as the relay's role (raises psycopg errors)."""
    return psycopg.connect(
        settings.conninfo,
        autocommit=True,
        connect_timeout=admin.CONNECT_TIMEOUT_S,
        prepare_threshold=None,
        application_name="outbox-relay doctor",
    )


def database_facts(conn: psycopg.Connection[Any], settings: Settings) -> DatabaseFacts:
    """Read every database fact the checks need (raises psycopg errors)."""
    cursor = conn.cursor(row_factory=dict_row)

    def one(name: str, **params: object) -> dict[str, Any]:
        row = cursor.execute(admin.named_query(settings, name), params).fetchone()
        return dict(row) if row else {}

    server = one("server_facts")
    names = {"schema": settings.schema, "table": settings.table}
    outbox_exists = bool(one("outbox_exists", **names)["found"])
    pending_versions: list[int] | None
    try:
        with conn.transaction():
            pending_versions = migrate.pending_versions(conn, settings)
    except psycopg.errors.InsufficientPrivilege:
        pending_versions = None
    publication = one("publication", **names, publication=settings.publication)
    privileges = one("privileges", **names) if outbox_exists else {}
    pending_topics: frozenset[str] = frozenset()
    if outbox_exists and privileges.get("can_select"):
        rows = cursor.execute(admin.named_query(settings, "pending_topics")).fetchall()
        pending_topics = frozenset(
            decisions.route_topic(
                settings.topic_template, r["topic"], r["event_type"], r["aggregate_type"]
            )
            for r in rows
        )
    return DatabaseFacts(
        role=server["role"],
        database=server["database"],
        wal_level=server["wal_level"],
        superuser=server["superuser"],
        replication=server["replication"],
        outbox_exists=outbox_exists,
        pending_versions=pending_versions,
        publication=(
            (publication["publishes_inserts"], publication["covers_outbox"])
            if publication
            else None
        ),
        emit_message_allowed=one("emit_message_allowed")["allowed"],
        schema_usage=bool(privileges.get("schema_usage")),
        can_select=bool(privileges.get("can_select")),
        can_update=bool(privileges.get("can_update")),
        can_delete=bool(privileges.get("can_delete")),
        slot=slot_status(conn, settings.slot_name),
        max_slot_wal_keep_size=max_slot_wal_keep_size(conn),
        pending_topics=pending_topics,
        **_security_facts(conn, settings, outbox_exists=outbox_exists),
    )


def _security_facts(
    conn: psycopg.Connection[Any], settings: Settings, *, outbox_exists: bool
) -> dict[str, Any]:
    """Who may emit table-less events, and who may insert more than events (issue 12)."""
    names = migrate.names_for(settings)
    row = conn.execute(relay_sql.query("roles", "emit_message_public", names)).fetchone()
    beyond: tuple[str, ...] = ()
    if outbox_exists:
        found = conn.execute(relay_sql.query("roles", "roles_beyond_events", names)).fetchone()
        beyond = tuple(found[0]) if found else ()
    lead = conn.execute(relay_sql.query("roles", "can_lead", names)).fetchone()
    return {
        "emit_message_public": bool(row and row[0]),
        "roles_beyond_events": beyond,
        "can_lead": lead[0] if lead else None,
    }


#: The producer options an admin client shares: where the cluster is and how to log in.
_CLIENT_OPTIONS: Final = frozenset(
    {
        "bootstrap_servers",
        "security_protocol",
        "ssl_context",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
    }
)


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """The aiokafka admin client options: the relay producer's address and security."""
    producer = kafka.producer_options(settings)
    options = {key: value for key, value in producer.items() if key in _CLIENT_OPTIONS}
    options["client_id"] = f"{settings.kafka_client_id}-doctor"
    options["request_timeout_ms"] = int(BROKER_TIMEOUT_S * 1000)
    return options


async def broker_facts(settings: Settings, timeout_s: float = BROKER_TIMEOUT_S) -> BrokerFacts:
    """Ask the cluster for its topics and, where it answers, whether it auto-creates."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.errors import KafkaConnectionError, KafkaError

    try:
        options = kafka_client_options(settings)
    except ConfigError as exc:
        return BrokerFacts(reachable=False, error=str(exc))
    client = AIOKafkaAdminClient(**options)
    try:
        await asyncio.wait_for(client.start(), timeout_s)
        topics = await asyncio.wait_for(client.list_topics(), timeout_s)
        cluster = await asyncio.wait_for(client.describe_cluster(), timeout_s)
    except KafkaConnectionError:
        return BrokerFacts(reachable=False, error="no broker answered (refused or unreachable)")
    except TimeoutError:
        return BrokerFacts(reachable=False, error=f"no answer within {timeout_s:g}s")
    except (KafkaError, OSError) as exc:
        return BrokerFacts(reachable=False, error=first_line(exc))
    finally:
        with contextlib.suppress(Exception):
            await client.close()
    brokers = cluster.get("brokers") or []
    auto_create = None
    if brokers:
        client = AIOKafkaAdminClient(**options)
        # Not every Kafka-protocol server answers DescribeConfigs: unknown is fine.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.start(), timeout_s)
            resource = ConfigResource(
                ConfigResourceType.BROKER, str(brokers[0]["node_id"]), {AUTO_CREATE_CONFIG: None}
            )
            responses = await asyncio.wait_for(client.describe_configs([resource]), timeout_s)
            auto_create = auto_create_from(responses)
        with contextlib.suppress(Exception):
            await client.close()
    return BrokerFacts(
        reachable=True,
        topics=frozenset(topics),
        brokers=len(brokers),
        auto_create=auto_create,
        idempotence_refused=await _idempotence_refused(settings, timeout_s),
    )


async def _idempotence_refused(settings: Settings, timeout_s: float) -> str | None:
    """Start the relay's own producer once: the broker answers InitProducerId or not."""
    if not settings.kafka_enable_idempotence:
        return None
    from relay.errors import BrokerCapabilityError, BrokerError

    publisher = kafka.KafkaPublisher(settings)
    try:
        await asyncio.wait_for(publisher.start(), timeout_s * 2)
    except BrokerCapabilityError as exc:
        return str(exc)
    except (BrokerError, TimeoutError):
        return None  # not a capability problem; "broker reachable" speaks for the rest
    finally:
        await publisher.stop()
    return None


def auto_create_from(responses: Sequence[Any]) -> bool | None:
    """``auto.create.topics.enable`` from DescribeConfigs responses, None when absent."""
    for response in responses:
        for resource in getattr(response, "resources", []):
            error_code, entries = resource[0], resource[4]
            if error_code:
                continue
            for entry in entries:
                if entry[0] == AUTO_CREATE_CONFIG and entry[1] is not None:
                    return str(entry[1]).lower() == "true"
    return None


# --- checks (pure) ----------------------------------------------------------------------


def _wal_only(name: str, settings: Settings) -> Check | None:
    if settings.mode is Mode.WAL:
        return None
    return Check(name, Level.SKIP, "poll mode does not need it")


def check_migrations(facts: DatabaseFacts, settings: Settings) -> Check:
    """The outbox exists and every migration of this version is applied."""
    name = "migrations current"
    outbox = f"{settings.schema}.{settings.table}"
    migrate_fix = f"outbox-relay migrate --schema {settings.schema} --table {settings.table}"
    if not facts.outbox_exists:
        return Check(name, Level.FAIL, f"{outbox} does not exist", migrate_fix)
    if facts.pending_versions is None:
        return Check(
            name,
            Level.WARN,
            f"role {facts.role} cannot read {outbox}_migrations",
            f"GRANT SELECT ON {sql_name(settings.schema, settings.table + '_migrations')} "
            f"TO {sql_name(facts.role)}",
        )
    if facts.pending_versions:
        missing = ", ".join(f"{v:04d}" for v in facts.pending_versions)
        return Check(name, Level.FAIL, f"{outbox} lacks migrations {missing}", migrate_fix)
    return Check(name, Level.OK, f"{outbox} is up to date")


def check_wal_level(facts: DatabaseFacts, settings: Settings) -> Check:
    """WAL mode decodes the WAL: it needs ``wal_level = logical``."""
    name = "wal_level"
    if settings.mode is not Mode.WAL:
        return Check(name, Level.SKIP, f"{facts.wal_level} (only wal mode needs logical)")
    if facts.wal_level != "logical":
        return Check(
            name,
            Level.FAIL,
            f"wal_level is {facts.wal_level}, wal mode needs logical",
            "ALTER SYSTEM SET wal_level = 'logical'; then restart PostgreSQL "
            "(managed services: set the logical replication parameter)",
        )
    return Check(name, Level.OK, "logical")


def check_replication_privilege(facts: DatabaseFacts, settings: Settings) -> Check:
    """Streaming from a slot needs the REPLICATION attribute (or superuser)."""
    name = "replication privilege"
    if skipped := _wal_only(name, settings):
        return skipped
    if facts.superuser or facts.replication:
        how = "superuser" if facts.superuser else "REPLICATION"
        return Check(name, Level.OK, f"role {facts.role} has {how}")
    return Check(
        name,
        Level.FAIL,
        f"role {facts.role} lacks REPLICATION",
        f"ALTER ROLE {sql_name(facts.role)} REPLICATION",
    )


def check_publication(facts: DatabaseFacts, settings: Settings) -> Check:
    """The publication exists, covers the outbox and publishes inserts."""
    name = "publication"
    if skipped := _wal_only(name, settings):
        return skipped
    outbox = f"{settings.schema}.{settings.table}"
    table, publication = sql_name(settings.schema, settings.table), sql_name(settings.publication)
    create = f"CREATE PUBLICATION {publication} FOR TABLE {table} WITH (publish = 'insert')"
    if facts.publication is None:
        return Check(name, Level.FAIL, f"publication {settings.publication} does not exist", create)
    publishes_inserts, covers = facts.publication
    if not covers:
        return Check(
            name,
            Level.FAIL,
            f"publication {settings.publication} does not include {outbox}",
            # Adding the table to another outbox's publication would stream this
            # outbox's inserts to that outbox's relay too: its own comes first.
            f"if it is another outbox's, give this one its own: --publication and "
            f"--slot-name; else ALTER PUBLICATION {publication} ADD TABLE {table}",
        )
    if not publishes_inserts:
        return Check(
            name,
            Level.FAIL,
            f"publication {settings.publication} does not publish inserts",
            f"ALTER PUBLICATION {publication} SET (publish = 'insert')",
        )
    return Check(name, Level.OK, f"{settings.publication} publishes inserts of {outbox}")


def _slot_unusable(slot: SlotStatus, facts: DatabaseFacts) -> Check | None:
    """A slot the relay cannot stream from: another plugin, another database, WAL lost."""
    name = "replication slot"
    if slot.plugin is not None and slot.plugin != "pgoutput":
        return Check(
            name,
            Level.FAIL,
            f"slot {slot.slot_name} decodes with {slot.plugin}; the relay needs pgoutput",
            "pick another --slot-name, or drop this slot if nothing else uses it",
        )
    if slot.database is not None and slot.database != facts.database:
        return Check(
            name,
            Level.FAIL,
            f"slot {slot.slot_name} belongs to database {slot.database}, not {facts.database}",
            "give each database's relay its own --slot-name",
        )
    if slot.lost:
        return Check(
            name,
            Level.FAIL,
            f"slot {slot.slot_name} lost WAL it needed",
            f"SELECT pg_drop_replication_slot('{slot.slot_name}'), restart the relay, and "
            "replay what was missed (outbox-relay replay)",
        )
    return None


def check_slot(facts: DatabaseFacts, settings: Settings) -> Check:
    """The slot is there and has not lost (or is not about to lose) the WAL it needs."""
    name = "replication slot"
    if skipped := _wal_only(name, settings):
        return skipped
    slot = facts.slot
    if slot is None:
        return Check(
            name,
            Level.WARN,
            f"slot {settings.slot_name} does not exist yet",
            "the relay creates it on its first start in wal mode",
        )
    if unusable := _slot_unusable(slot, facts):
        return unusable
    retained = admin.format_bytes(slot.retained_bytes)
    if slot.wal_status == "unreserved":
        return Check(
            name,
            Level.WARN,
            f"slot {slot.slot_name} retains {retained}, past max_slot_wal_keep_size: "
            "it will be invalidated at the next checkpoint",
            "start the relay now (it must catch up), or raise max_slot_wal_keep_size",
        )
    state = "active" if slot.active else "inactive"
    detail = f"{slot.slot_name} {state}, retains {retained}, wal_status {slot.wal_status}"
    if not slot.active:
        return Check(
            name,
            Level.WARN,
            detail,
            "start the relay: an inactive slot keeps WAL until it is consumed",
        )
    return Check(name, Level.OK, detail)


def check_wal_retention(facts: DatabaseFacts, settings: Settings) -> Check:
    """A stopped relay's slot must not be able to fill the disk, nor be close to its cap."""
    name = "WAL retention"
    if skipped := _wal_only(name, settings):
        return skipped
    slot = facts.slot
    keep = facts.max_slot_wal_keep_size
    if keep < 0:
        return Check(
            name,
            Level.WARN,
            "max_slot_wal_keep_size is unlimited: a stopped relay's slot can fill the disk",
            "ALTER SYSTEM SET max_slot_wal_keep_size = '50GB'; SELECT pg_reload_conf()",
        )
    limit = admin.format_bytes(keep)
    safe_wal_size = slot.safe_wal_size if slot is not None else None
    if safe_wal_size is not None and safe_wal_size < keep * SAFE_WAL_WARN_FRACTION:
        return Check(
            name,
            Level.WARN,
            f"only {admin.format_bytes(safe_wal_size)} of {limit} left before "
            f"slot {settings.slot_name} is invalidated",
            "make sure the relay runs and catches up, or raise max_slot_wal_keep_size",
        )
    safe = f", {admin.format_bytes(safe_wal_size)} left" if safe_wal_size is not None else ""
    return Check(name, Level.OK, f"max_slot_wal_keep_size {limit}{safe}")


def check_heartbeat(facts: DatabaseFacts, settings: Settings) -> Check:
    """The relay keeps an idle slot moving with ``pg_logical_emit_message``."""
    name = "heartbeat"
    if skipped := _wal_only(name, settings):
        return skipped
    if facts.emit_message_allowed:
        return Check(name, Level.OK, "pg_logical_emit_message is executable")
    return Check(
        name,
        Level.FAIL,
        f"role {facts.role} cannot execute pg_logical_emit_message",
        "GRANT EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) "
        f"TO {sql_name(facts.role)}",
    )


def check_privileges(facts: DatabaseFacts, settings: Settings) -> Check:
    """The relay's role may read and mark the outbox (and delete, when configured)."""
    name = "role privileges"
    outbox = f"{settings.schema}.{settings.table}"
    if not facts.outbox_exists:
        return Check(name, Level.SKIP, f"{outbox} does not exist")
    if not facts.schema_usage:
        return Check(
            name,
            Level.FAIL,
            f"role {facts.role} lacks USAGE on schema {settings.schema}",
            f"GRANT USAGE ON SCHEMA {sql_name(settings.schema)} TO {sql_name(facts.role)}",
        )
    needed = {"SELECT": facts.can_select, "UPDATE": facts.can_update}
    if settings.on_sent is OnSent.DELETE:
        needed["DELETE"] = facts.can_delete
    missing = [privilege for privilege, granted in needed.items() if not granted]
    if missing:
        return Check(
            name,
            Level.FAIL,
            f"role {facts.role} lacks {', '.join(missing)} on {outbox}",
            f"GRANT {', '.join(missing)} ON {sql_name(settings.schema, settings.table)} "
            f"TO {sql_name(facts.role)}",
        )
    if not facts.can_delete:
        return Check(
            name,
            Level.WARN,
            f"role {facts.role} lacks DELETE on {outbox} (purge needs it)",
            f"GRANT DELETE ON {sql_name(settings.schema, settings.table)} "
            f"TO {sql_name(facts.role)}, or purge with another role",
        )
    return Check(name, Level.OK, f"role {facts.role} may read, mark and delete {outbox}")


def check_event_writers(facts: DatabaseFacts, settings: Settings) -> Check:
    """Services may insert an event's own columns, nothing of the relay's."""
    name = "event writers"
    outbox = f"{settings.schema}.{settings.table}"
    if not facts.roles_beyond_events:
        return Check(name, Level.OK, "no role but the relay's may set the relay's columns")
    listed = ", ".join(facts.roles_beyond_events)
    return Check(
        name,
        Level.WARN,
        f"{listed} may insert the relay's columns of {outbox} (state, attempts, ...); "
        "the outbox's trigger refuses such rows, but the grant is wider than events need",
        f"outbox-relay grants --app-role {facts.roles_beyond_events[0]} --apply "
        f"(revokes the table-wide INSERT, grants the event's columns)",
    )


def check_leadership_lease(facts: DatabaseFacts, settings: Settings) -> Check:
    """The relay's role may take the leadership lease (migration 0003)."""
    name = "leadership lease"
    lease = f"{settings.schema}.{settings.table}_leader"
    if facts.can_lead is None:
        return Check(
            name,
            Level.SKIP if not facts.outbox_exists else Level.FAIL,
            f"{lease} does not exist",
            f"outbox-relay migrate --schema {settings.schema} --table {settings.table}",
        )
    if not facts.can_lead:
        return Check(
            name,
            Level.FAIL,
            f"role {facts.role} may not update {lease}: it would stand by forever",
            f"GRANT SELECT, UPDATE ON {lease} TO {facts.role}",
        )
    return Check(name, Level.OK, f"role {facts.role} may take {lease}")


def check_message_emitters(facts: DatabaseFacts, settings: Settings) -> Check:
    """With --message-prefix, only the services' roles should emit table-less events."""
    name = "table-less event emitters"
    if skipped := _wal_only(name, settings):
        return skipped
    if not settings.message_prefix:
        return Check(name, Level.OK, "not relayed (no --message-prefix)")
    if facts.emit_message_public:
        return Check(
            name,
            Level.WARN,
            f"every role may emit table-less events under prefix {settings.message_prefix!r}",
            "outbox-relay grants --message-prefix ... --app-role ... as a superuser "
            "(REVOKE EXECUTE ON FUNCTION pg_logical_emit_message FROM PUBLIC); where no "
            "superuser is given (managed services), rely on the topic allow-list",
        )
    return Check(name, Level.OK, "only granted roles may call pg_logical_emit_message")


def check_broker(broker: BrokerFacts, settings: Settings) -> Check:
    """A metadata request to the bootstrap servers is answered."""
    name = "broker reachable"
    if not broker.reachable:
        return Check(
            name,
            Level.FAIL,
            f"{settings.bootstrap_servers}: {broker.error}",
            "check --bootstrap-servers, the network path and the Kafka security settings",
        )
    return Check(
        name, Level.OK, f"{settings.bootstrap_servers}: {broker.brokers} broker(s) answered"
    )


def check_idempotence(broker: BrokerFacts, settings: Settings) -> Check:
    """With idempotence on (the default), the broker must grant a producer id."""
    name = "idempotent producer"
    if not settings.kafka_enable_idempotence:
        return Check(name, Level.SKIP, "kafka_enable_idempotence is off")
    if not broker.reachable:
        return Check(name, Level.SKIP, "broker unreachable")
    if broker.idempotence_refused:
        return Check(
            name,
            Level.FAIL,
            broker.idempotence_refused,
            "set --kafka-enable-idempotence false (duplicates on producer retries), "
            "or use a broker or permission that grants InitProducerId",
        )
    return Check(name, Level.OK, "the broker grants producer ids")


def check_topics(
    broker: BrokerFacts, pending_topics: frozenset[str], *, relay_creates: bool = True
) -> Check:
    """Topics of pending events exist, or the cluster creates them on first use.

    `relay_creates` is ``kafka_auto_create_topics``: without it the relay never asks the
    broker to create a topic, whatever the broker allows.
    """
    name = "topics"
    if not broker.reachable:
        return Check(name, Level.SKIP, "broker unreachable")
    missing = sorted(pending_topics - broker.topics)
    if not missing:
        if not pending_topics:
            return Check(name, Level.OK, "no pending events")
        return Check(name, Level.OK, f"all {len(pending_topics)} topic(s) of pending events exist")
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")  # noqa: PLR2004
    fix = f"create them (kafka-topics.sh --create --topic {missing[0]} ...)"
    if relay_creates and broker.auto_create is True:
        return Check(name, Level.OK, f"{shown} will be auto-created")
    if not relay_creates or broker.auto_create is False:
        off = "auto-create is off" if relay_creates else "kafka_auto_create_topics is off"
        return Check(name, Level.FAIL, f"{shown} missing and {off}", fix)
    return Check(
        name,
        Level.WARN,
        f"{shown} missing; auto-create unknown",
        fix + " unless the cluster auto-creates topics",
    )


DATABASE_CHECKS: Final[tuple[Callable[[DatabaseFacts, Settings], Check], ...]] = (
    check_migrations,
    check_wal_level,
    check_replication_privilege,
    check_publication,
    check_slot,
    check_wal_retention,
    check_heartbeat,
    check_privileges,
    check_event_writers,
    check_leadership_lease,
    check_message_emitters,
)
DATABASE_CHECK_NAMES: Final = (
    "migrations current",
    "wal_level",
    "replication privilege",
    "publication",
    "replication slot",
    "WAL retention",
    "heartbeat",
    "role privileges",
    "event writers",
    "leadership lease",
    "table-less event emitters",
)


def _gather(settings: Settings) -> tuple[DatabaseFacts | None, Check]:
    name = "database reachable"
    try:
        conn = connect(settings)
    except psycopg.Error as exc:
        # Name what a refusal is (authentication failed, database does not exist, ...).
        error = connection.connect_error(exc, "cannot connect")
        return None, Check(
            name,
            Level.FAIL,
            str(error).removeprefix("cannot connect: "),
            "check --database-url, that PostgreSQL runs, and pg_hba.conf",
        )
    with conn:
        try:
            facts = database_facts(conn, settings)
        except psycopg.Error as exc:
            return None, Check(
                name,
                Level.FAIL,
                f"connected, but reading the catalog failed: {first_line(exc)}",
                "run doctor with the relay's role on a supported PostgreSQL (14 or later)",
            )
    return facts, Check(name, Level.OK, f"{facts.database} as {facts.role}")


def run(settings: Settings) -> list[Check]:
    """Gather the facts and run every check, in checklist order."""
    checks: list[Check] = []
    facts: DatabaseFacts | None = None
    if not settings.database_url:
        checks.append(
            Check(
                "database reachable",
                Level.FAIL,
                "no database URL",
                "set --database-url or RELAY_DATABASE_URL",
            )
        )
    else:
        facts, reachable = _gather(settings)
        checks.append(reachable)
    if facts is None:
        checks.extend(Check(name, Level.SKIP, "no database facts") for name in DATABASE_CHECK_NAMES)
    else:
        checks.extend(check(facts, settings) for check in DATABASE_CHECKS)
    # aiokafka logs connection failures itself; the check line says it once, with the fix.
    kafka_logger = logging.getLogger("aiokafka")
    level = kafka_logger.level
    kafka_logger.setLevel(logging.CRITICAL + 1)
    try:
        broker = asyncio.run(broker_facts(settings))
    finally:
        kafka_logger.setLevel(level)
    checks.append(check_broker(broker, settings))
    checks.append(check_idempotence(broker, settings))
    checks.append(
        check_topics(
            broker,
            facts.pending_topics if facts else frozenset(),
            relay_creates=settings.kafka_auto_create_topics,
        )
    )
    return checks
