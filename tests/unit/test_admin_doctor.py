from __future__ import annotations

import dataclasses

from relay import doctor
from relay.config import Mode, OnSent, Settings
from relay.doctor import BrokerFacts, DatabaseFacts, Level
from tests.unit.slot_fixtures import GIB, SLOT

WAL = Settings(mode=Mode.WAL)
POLL = Settings()

FACTS = DatabaseFacts(
    role="relay",
    database="app",
    wal_level="logical",
    superuser=False,
    replication=True,
    outbox_exists=True,
    pending_versions=[],
    publication=(True, True),
    emit_message_allowed=True,
    schema_usage=True,
    can_select=True,
    can_update=True,
    can_delete=True,
    slot=SLOT,
    max_slot_wal_keep_size=GIB,
    pending_topics=frozenset({"orders"}),
)


def _with(**changes: object) -> DatabaseFacts:
    return dataclasses.replace(FACTS, **changes)  # type: ignore[arg-type]


def test_a_healthy_wal_deployment_passes_every_database_check() -> None:
    for check in doctor.DATABASE_CHECKS:
        result = check(FACTS, WAL)
        assert result.level is Level.OK, result
    assert [check(FACTS, WAL).name for check in doctor.DATABASE_CHECKS] == list(
        doctor.DATABASE_CHECK_NAMES
    )


def test_poll_mode_skips_what_only_wal_needs() -> None:
    broken = _with(wal_level="replica", replication=False, publication=None)
    levels = {
        check(broken, POLL).name: check(broken, POLL).level for check in doctor.DATABASE_CHECKS
    }
    assert levels == {
        "migrations current": Level.OK,
        "wal_level": Level.SKIP,
        "replication privilege": Level.SKIP,
        "publication": Level.SKIP,
        "replication slot": Level.SKIP,
        "WAL retention": Level.SKIP,
        "heartbeat": Level.SKIP,
        "role privileges": Level.OK,
        "event writers": Level.OK,
        "leadership lease": Level.OK,
        "table-less event emitters": Level.SKIP,
    }


def test_wrong_wal_level_fails_with_the_fix() -> None:
    check = doctor.check_wal_level(_with(wal_level="replica"), WAL)
    assert check.level is Level.FAIL
    assert "wal_level = 'logical'" in check.fix


def test_publication_missing_or_partial_fails() -> None:
    assert doctor.check_publication(_with(publication=None), WAL).fix.startswith(
        "CREATE PUBLICATION outbox_pub FOR TABLE public.outbox"
    )
    assert "ADD TABLE" in doctor.check_publication(_with(publication=(True, False)), WAL).fix
    assert doctor.check_publication(_with(publication=(False, True)), WAL).level is Level.FAIL


def test_replication_privilege() -> None:
    check = doctor.check_replication_privilege(_with(replication=False), WAL)
    assert (check.level, check.fix) == (Level.FAIL, "ALTER ROLE relay REPLICATION")
    assert (
        doctor.check_replication_privilege(_with(replication=False, superuser=True), WAL).level
        is Level.OK
    )


def test_slot_states() -> None:
    def slot(**changes: object) -> Level:
        facts = _with(slot=dataclasses.replace(SLOT, **changes))  # type: ignore[arg-type]
        return doctor.check_slot(facts, WAL).level

    assert doctor.check_slot(_with(slot=None), WAL).level is Level.WARN
    assert slot(active=False) is Level.WARN
    assert slot(wal_status="unreserved") is Level.WARN
    assert slot(wal_status="lost") is Level.FAIL
    assert slot(plugin="test_decoding") is Level.FAIL
    assert slot(database="other") is Level.FAIL
    assert slot(plugin="pgoutput", database="app") is Level.OK


def test_wal_retention() -> None:
    def retention(**changes: object) -> Level:
        facts = _with(slot=dataclasses.replace(SLOT, **changes))  # type: ignore[arg-type]
        return doctor.check_wal_retention(facts, WAL).level

    assert doctor.check_wal_retention(_with(max_slot_wal_keep_size=-1), WAL).level is Level.WARN
    assert doctor.check_wal_retention(_with(slot=None), WAL).level is Level.OK
    assert retention(safe_wal_size=GIB // 10) is Level.WARN
    assert retention(safe_wal_size=GIB // 2) is Level.OK


def test_privileges() -> None:
    no_update = doctor.check_privileges(_with(can_update=False), POLL)
    assert (no_update.level, no_update.fix) == (
        Level.FAIL,
        "GRANT UPDATE ON public.outbox TO relay",
    )
    assert doctor.check_privileges(_with(schema_usage=False), POLL).level is Level.FAIL
    assert doctor.check_privileges(_with(can_delete=False), POLL).level is Level.WARN
    deleting = Settings(on_sent=OnSent.DELETE)
    assert doctor.check_privileges(_with(can_delete=False), deleting).level is Level.FAIL
    assert doctor.check_privileges(_with(outbox_exists=False), POLL).level is Level.SKIP


def test_migrations() -> None:
    assert doctor.check_migrations(_with(outbox_exists=False), POLL).fix.startswith(
        "outbox-relay migrate"
    )
    behind = doctor.check_migrations(_with(pending_versions=[2, 3]), POLL)
    assert (behind.level, behind.detail) == (
        Level.FAIL,
        "public.outbox lacks migrations 0002, 0003",
    )
    assert doctor.check_migrations(_with(pending_versions=None), POLL).level is Level.WARN


def test_heartbeat() -> None:
    assert doctor.check_heartbeat(_with(emit_message_allowed=False), WAL).level is Level.FAIL


def test_broker_and_topics() -> None:
    down = BrokerFacts(reachable=False, error="connection refused")
    assert doctor.check_broker(down, POLL).level is Level.FAIL
    assert doctor.check_topics(down, frozenset({"a"})).level is Level.SKIP
    up = BrokerFacts(reachable=True, topics=frozenset({"a"}), brokers=1)
    assert doctor.check_topics(up, frozenset({"a"})).level is Level.OK
    assert doctor.check_topics(up, frozenset()).level is Level.OK
    assert doctor.check_topics(up, frozenset({"a", "b"})).level is Level.WARN
    auto = dataclasses.replace(up, auto_create=True)
    assert doctor.check_topics(auto, frozenset({"b"})).level is Level.OK
    manual = dataclasses.replace(up, auto_create=False)
    assert doctor.check_topics(manual, frozenset({"b"})).level is Level.FAIL
    never = doctor.check_topics(auto, frozenset({"b"}), relay_creates=False)
    assert never.level is Level.FAIL
    assert "kafka_auto_create_topics is off" in never.detail


def test_broker_client_uses_the_relay_security_settings() -> None:
    settings = Settings(
        bootstrap_servers="k1:9093,k2:9093",
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="relay",
        kafka_sasl_password="not-a-real-secret",  # noqa: S106 - a test value
    )
    options = doctor.kafka_client_options(settings)
    assert options["bootstrap_servers"] == "k1:9093,k2:9093"
    assert (options["sasl_mechanism"], options["sasl_plain_username"]) == ("SCRAM-SHA-512", "relay")
    assert "acks" not in options


def test_auto_create_is_read_from_describe_configs() -> None:
    class Response:
        def __init__(self, *resources: object) -> None:
            self.resources = list(resources)

    entry = ("auto.create.topics.enable", "false", False, False, False)
    assert doctor.auto_create_from([Response((0, None, 4, "1", [entry]))]) is False
    on = ("auto.create.topics.enable", "true", False, True, False)
    assert doctor.auto_create_from([Response((0, None, 4, "1", [on]))]) is True
    assert doctor.auto_create_from([Response((42, "denied", 4, "1", []))]) is None
    assert doctor.auto_create_from([]) is None


def test_fix_lines_quote_names_that_psql_would_fold() -> None:
    from relay.doctor import sql_name

    assert sql_name("public", "outbox") == "public.outbox"
    assert sql_name("Events", "Outbox") == '"Events"."Outbox"'
    assert sql_name("Relay") == '"Relay"'
