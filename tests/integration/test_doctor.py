"""`outbox-relay doctor` against real servers, each broken the way deployments break."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from relay import migrate
from relay._embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from relay.config import Settings
from tests.support import run_cli


def doctor(*args: str) -> tuple[int, dict[str, dict[str, str]], str]:
    """Exit code, the checks by name, and the readable output of a second run."""
    result = run_cli("doctor", "--json", *args)
    assert result.stderr == "", result.stderr
    report = json.loads(result.stdout)
    checks = {check["name"]: check for check in report["checks"]}
    assert report["ok"] is (result.returncode == 0)
    return result.returncode, checks, run_cli("doctor", *args).stdout


def levels(checks: dict[str, dict[str, str]]) -> dict[str, str]:
    return {name: check["level"] for name, check in checks.items()}


def test_a_working_wal_deployment_passes(database_url: str, broker: EmbeddedBroker) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT public.outbox_publish('doctor.orders', 'k', '{}')")
    code, checks, text = doctor(
        "--mode", "wal", "--database-url", database_url,
        "--bootstrap-servers", broker.bootstrap_servers, "--kafka-enable-idempotence", "false",
    )  # fmt: skip
    assert code == 0, text
    assert levels(checks) == {
        "database reachable": "ok",
        "migrations current": "ok",
        "wal_level": "ok",
        "replication privilege": "ok",
        "publication": "ok",
        # The relay creates its slot on first start.
        "replication slot": "warn",
        "WAL retention": "ok",
        "heartbeat": "ok",
        "role privileges": "ok",
        "event writers": "ok",
        "leadership lease": "ok",
        "table-less event emitters": "ok",
        "broker reachable": "ok",
        "idempotent producer": "skip",
        # tansu auto-creates topics but does not say so through DescribeConfigs.
        "topics": checks["topics"]["level"],
    }
    assert checks["topics"]["level"] in {"ok", "warn"}
    assert "doctor.orders" in checks["topics"]["detail"] or checks["topics"]["level"] == "ok"
    assert "fix: the relay creates it on its first start in wal mode" in text


def test_a_missing_publication_fails_with_the_statement_that_fixes_it(
    database_url: str, broker: EmbeddedBroker
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP PUBLICATION outbox_pub")
    args = (
        "--database-url", database_url, "--bootstrap-servers", broker.bootstrap_servers,
        "--kafka-enable-idempotence", "false",
    )  # fmt: skip
    code, checks, text = doctor("--mode", "wal", *args)
    assert code == 1
    assert checks["publication"]["level"] == "fail"
    assert checks["publication"]["fix"] == (
        "CREATE PUBLICATION outbox_pub FOR TABLE public.outbox WITH (publish = 'insert')"
    )
    assert "fail  publication" in text
    # Poll mode does not need it.
    code, checks, _ = doctor("--mode", "poll", *args)
    assert (code, checks["publication"]["level"]) == (0, "skip")


def test_an_unreachable_broker_fails(database_url: str) -> None:
    closed = f"127.0.0.1:{free_port()}"
    code, checks, text = doctor("--database-url", database_url, "--bootstrap-servers", closed)
    assert code == 1
    assert checks["broker reachable"]["level"] == "fail"
    assert closed in checks["broker reachable"]["detail"]
    assert checks["topics"]["level"] == "skip"
    assert checks["database reachable"]["level"] == "ok"
    assert f"{closed}: no broker answered (refused or unreachable)" in text


def test_an_unreachable_database_fails_and_skips_what_depends_on_it(
    broker: EmbeddedBroker,
) -> None:
    code, checks, _ = doctor(
        "--database-url", f"postgresql://relay@127.0.0.1:{free_port()}/app",
        "--bootstrap-servers", broker.bootstrap_servers,
    )  # fmt: skip
    assert code == 1
    assert checks["database reachable"]["level"] == "fail"
    assert checks["migrations current"]["level"] == "skip"
    assert checks["broker reachable"]["level"] == "ok"


def test_an_unmigrated_database_fails(empty_database_url: str, broker: EmbeddedBroker) -> None:
    code, checks, _ = doctor(
        "--database-url", empty_database_url, "--bootstrap-servers", broker.bootstrap_servers
    )
    assert code == 1
    assert checks["migrations current"]["fix"].startswith("outbox-relay migrate")


def test_a_role_without_privileges_is_told_what_to_grant(
    database_url: str, postgres: EmbeddedPostgres, broker: EmbeddedBroker
) -> None:
    role = f"relay_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT ON public.outbox TO {role}")
    try:
        url = database_url.replace("postgres@", f"{role}@", 1)
        code, checks, _ = doctor(
            "--mode", "wal", "--database-url", url,
            "--bootstrap-servers", broker.bootstrap_servers,
        )  # fmt: skip
        assert code == 1
        assert checks["role privileges"]["fix"] == f"GRANT UPDATE ON public.outbox TO {role}"
        assert checks["replication privilege"]["fix"] == f"ALTER ROLE {role} REPLICATION"
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"REVOKE ALL ON public.outbox FROM {role}")
            conn.execute(f"DROP OWNED BY {role}")
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")


@pytest.fixture(scope="module")
def replica_cluster() -> Iterator[EmbeddedPostgres]:
    """A private cluster with wal_level = replica: fine for poll mode, not for wal mode."""
    # Its own temporary directory: the server may run as another user than pytest's.
    cluster = EmbeddedPostgres()
    try:
        cluster.initdb()
        with (cluster.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("wal_level = 'replica'\n")  # the last setting in the file wins
        cluster.start()
        migrate.apply(Settings(database_url=cluster.url))
        yield cluster
    finally:
        cluster.__exit__(None, None, None)


def test_a_wrong_wal_level_fails_in_wal_mode(
    replica_cluster: EmbeddedPostgres, broker: EmbeddedBroker
) -> None:
    args = (
        "--database-url", replica_cluster.url, "--bootstrap-servers", broker.bootstrap_servers,
        "--kafka-enable-idempotence", "false",
    )  # fmt: skip
    code, checks, text = doctor("--mode", "wal", *args)
    assert code == 1
    assert checks["wal_level"]["level"] == "fail"
    assert checks["wal_level"]["detail"] == "wal_level is replica, wal mode needs logical"
    assert "fix: ALTER SYSTEM SET wal_level = 'logical'" in text
    code, checks, _ = doctor("--mode", "poll", *args)
    assert (code, checks["wal_level"]["level"]) == (0, "skip")


def test_a_broker_without_the_idempotent_producer_fails_with_the_flag(
    database_url: str, broker: EmbeddedBroker
) -> None:
    """Default settings against the test broker (no InitProducerId): doctor says so."""
    code, checks, _ = doctor(
        "--database-url", database_url, "--bootstrap-servers", broker.bootstrap_servers
    )
    assert code == 1
    check = checks["idempotent producer"]
    assert check["level"] == "fail"
    assert "refused InitProducerId" in check["detail"]
    assert check["fix"].startswith("set --kafka-enable-idempotence false")
    assert checks["broker reachable"]["level"] == "ok"


def test_a_missing_database_is_named(postgres: EmbeddedPostgres, broker: EmbeddedBroker) -> None:
    code, checks, _ = doctor(
        "--database-url", postgres.url_for("no_such_db"),
        "--bootstrap-servers", broker.bootstrap_servers,
    )  # fmt: skip
    assert code == 1
    detail = checks["database reachable"]["detail"]
    assert detail.startswith('database does not exist: database "no_such_db" does not exist')
