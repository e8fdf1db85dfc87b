"""The real test stack: a PostgreSQL cluster and a Kafka-protocol broker per session.

Each test that needs a database gets a fresh one cloned from a migrated template, and
its own topic names, so tests never see each other's events.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from relay import migrate
from relay._embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from relay.config import Settings
from tests.support import drop_database
from tests.tcp_proxy import TcpProxy

TEMPLATE = "outbox_template"
_counter = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres() as cluster:
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {TEMPLATE}")
        migrate.apply(Settings(database_url=cluster.url_for(TEMPLATE)))
        yield cluster


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = Path(tmp_path_factory.mktemp("broker")) / "broker.log"
    with EmbeddedBroker(log_file=log) as server:
        yield server


@pytest.fixture
def proxied_broker() -> Iterator[tuple[EmbeddedBroker, TcpProxy]]:
    """A broker of the test's own behind a TCP proxy it advertises, so that every
    connection, not only the bootstrap one, goes through the proxy and can be cut."""
    port = free_port()
    with (
        TcpProxy("127.0.0.1", port) as proxy,
        EmbeddedBroker(port, advertised_port=proxy.port) as broker,
    ):
        yield broker, proxy


@pytest.fixture
def database_url(postgres: EmbeddedPostgres) -> Iterator[str]:
    """A fresh database with the outbox already migrated."""
    name = f"test_{next(_counter)}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    yield postgres.url_for(name)
    drop_database(postgres.url, name)


@pytest.fixture
def empty_database_url(postgres: EmbeddedPostgres) -> Iterator[str]:
    """A fresh database without the outbox."""
    name = f"empty_{next(_counter)}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres.url_for(name)
    drop_database(postgres.url, name)


@pytest.fixture
def topic() -> str:
    """A topic name no other test uses."""
    return f"t{next(_counter)}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(database_url: str, broker: EmbeddedBroker) -> Settings:
    """Settings for a relay on the test database and broker.

    The idempotent producer needs InitProducerId, which the test broker does not
    implement; production keeps the default (on).
    """
    return Settings(
        database_url=database_url,
        bootstrap_servers=broker.bootstrap_servers,
        kafka_enable_idempotence=False,
        poll_interval=0.2,
    )
