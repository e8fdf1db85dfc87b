"""/readyz in WAL mode names the connection that is down, and heals by itself.

``outbox-relay run --mode wal`` in a subprocess against the real PostgreSQL and broker:
its walsender is terminated while its role may not log in, so the stream cannot come
back until the role may again.
"""

from __future__ import annotations

import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from relay._embedded import EmbeddedPostgres
from relay.config import Settings
from tests.integration.test_http import HttpRelay, running_relay, wait_until


@pytest.fixture
def relay_role(postgres: EmbeddedPostgres, database_url: str) -> Iterator[str]:
    """A role of the relay's own, so that only it can be kept from logging in."""
    role = f"probe_wal_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN SUPERUSER")
    try:
        yield role
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            conn.execute(f"DROP OWNED BY {role}")  # the publication it created
            for _ in range(50):  # its backends end asynchronously
                try:
                    conn.execute(f"DROP ROLE {role}")
                    break
                except psycopg.errors.ObjectInUse:
                    time.sleep(0.1)


def readyz(relay: HttpRelay) -> tuple[int, str]:
    return relay.get("/readyz")


def test_readyz_names_the_wal_stream_while_it_cannot_reconnect(
    settings: Settings, relay_role: str, tmp_path: Path
) -> None:
    url = settings.database_url.replace("postgres@", f"{relay_role}@", 1)
    assert urllib.parse.urlsplit(url).username == relay_role
    relay_settings = Settings(database_url=url, bootstrap_servers=settings.bootstrap_servers)
    slot = f"s_{uuid.uuid4().hex[:12]}"
    with (
        running_relay(relay_settings, tmp_path, "--mode", "wal", "--slot-name", slot) as relay,
        psycopg.connect(settings.database_url, autocommit=True) as admin,
    ):
        wait_until("/readyz 200", lambda: readyz(relay) == (200, "ready\n"), 30)
        admin.execute(f"ALTER ROLE {relay_role} NOLOGIN")
        ended = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE usename = %s AND backend_type = 'walsender'",
            (relay_role,),
        ).fetchone()
        assert ended == (1,)
        wait_until("/readyz 503", lambda: readyz(relay)[0] == 503, 15)
        status, body = readyz(relay)
        assert status == 503
        assert body.startswith("not connected to PostgreSQL: WAL stream connection down: "), body
        assert f'role "{relay_role}" is not permitted to log in' in body, body
        # Down, not dead: a restart would meet the same refusal.
        assert relay.get("/healthz") == (200, "ok\n")
        admin.execute(f"ALTER ROLE {relay_role} LOGIN")
        wait_until("/readyz 200 again", lambda: readyz(relay) == (200, "ready\n"), 30)
        assert relay.process.poll() is None
