"""WAL mode set-up: what is missing is created, what is wrong is refused in one line."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from relay import migrate
from relay._embedded import EmbeddedPostgres
from relay.config import Settings
from relay.slot import WalSetupError
from relay.wal import WalSource
from tests.integration.test_wal_relay import insert_events, wal_settings
from tests.support import run_cli


async def start_and_stop(settings: Settings) -> None:
    source = WalSource(settings)
    await source.start()
    await source.stop()


async def test_a_missing_publication_is_created(settings: Settings) -> None:
    settings = wal_settings(settings)
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("DROP PUBLICATION outbox_pub")
    await start_and_stop(settings)
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT tablename FROM pg_publication_tables WHERE pubname = 'outbox_pub'"
        ).fetchone()
    assert row == ("outbox",)


async def test_a_publication_without_the_outbox_is_refused(settings: Settings) -> None:
    settings = wal_settings(settings)
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("DROP PUBLICATION outbox_pub")
        conn.execute("CREATE PUBLICATION outbox_pub")
    with pytest.raises(WalSetupError) as raised:
        await start_and_stop(settings)
    assert str(raised.value) == (
        "publication outbox_pub does not include public.outbox: if it is another outbox's, "
        "set --publication and --slot-name to this outbox's own, "
        "else ALTER PUBLICATION outbox_pub ADD TABLE public.outbox"
    )


@pytest.fixture
def role_without_replication(postgres: EmbeddedPostgres) -> Iterator[str]:
    name = f"app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN")
    yield name
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"DROP ROLE {name}")


async def test_a_role_without_replication_privilege_is_refused(
    settings: Settings, role_without_replication: str
) -> None:
    url = settings.database_url.replace("postgres@", f"{role_without_replication}@")
    settings = wal_settings(settings, database_url=url)
    with pytest.raises(WalSetupError, match=f"ALTER ROLE {role_without_replication} REPLICATION"):
        await start_and_stop(settings)


async def test_a_slot_of_another_plugin_is_refused(settings: Settings) -> None:
    settings = wal_settings(settings)
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_create_logical_replication_slot(%s, 'test_decoding')",
            (settings.slot_name,),
        )
    with pytest.raises(WalSetupError, match="uses plugin test_decoding, not pgoutput"):
        await start_and_stop(settings)


async def test_slot_status_and_drop_commands(settings: Settings, topic: str) -> None:
    settings = wal_settings(settings)
    await start_and_stop(settings)
    insert_events(settings.database_url, topic, ["a"], 1)
    env = {"RELAY_DATABASE_URL": settings.database_url, "RELAY_SLOT_NAME": settings.slot_name}
    status = run_cli("slot", "status", env=env)
    assert status.returncode == 0, status.stderr
    assert f'slot_name = "{settings.slot_name}"' in status.stdout
    assert "active = false" in status.stdout
    assert "unconfirmed_bytes = " in status.stdout
    refused = run_cli("slot", "drop", env=env)
    assert (refused.returncode, refused.stderr) == (
        2,
        f"outbox-relay: error: dropping slot {settings.slot_name} needs --yes\n",
    )
    dropped = run_cli("slot", "drop", "--yes", env=env)
    assert dropped.returncode == 0, dropped.stderr
    gone = run_cli("slot", "status", env=env)
    assert (gone.returncode, gone.stderr) == (
        1,
        f"outbox-relay: error: replication slot {settings.slot_name} does not exist\n",
    )


def test_run_refuses_a_server_without_logical_wal_level(settings: Settings) -> None:
    cluster = EmbeddedPostgres()
    cluster.initdb()
    with (cluster.data_dir / "postgresql.conf").open("a") as conf:
        conf.write("wal_level = 'replica'\n")
    cluster.start()
    try:
        migrate.apply(Settings(database_url=cluster.url))
        settings = dataclasses.replace(settings, database_url=cluster.url)
        result = run_cli(
            "run",
            "--mode",
            "wal",
            env={
                "RELAY_DATABASE_URL": settings.database_url,
                "RELAY_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
                "RELAY_KAFKA_ENABLE_IDEMPOTENCE": "false",
            },
        )
    finally:
        cluster.__exit__(None, None, None)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "outbox-relay: error: wal mode needs wal_level = logical, the server has replica; "
        "set it in postgresql.conf and restart PostgreSQL"
    )
