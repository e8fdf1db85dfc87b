from __future__ import annotations

import uuid

import psycopg
import pytest
import sqlalchemy
from alembic.migration import MigrationContext
from alembic.operations import Operations

from relay.errors import MigrationError
from relay.inbox import Inbox
from relay.inbox import migrate as inbox_migrate
from relay.inbox.alembic import create_inbox, drop_inbox, upgrade_inbox


def test_alembic_creates_the_inbox_migrate_agrees_and_drop_removes_it(database_url: str) -> None:
    engine = sqlalchemy.create_engine(
        database_url.replace("postgresql://", "postgresql+psycopg://")
    )
    try:
        with engine.begin() as conn:
            create_inbox(Operations(MigrationContext.configure(conn)), version=1, schema="svc")
        assert inbox_migrate.apply(database_url, "svc") == []
        with psycopg.connect(database_url) as conn:
            assert Inbox(consumer="c", schema="svc").claim(conn, uuid.uuid4())
            conn.commit()
        with engine.begin() as conn:
            drop_inbox(Operations(MigrationContext.configure(conn)), schema="svc")
        with psycopg.connect(database_url) as conn:
            assert conn.execute("SELECT to_regclass('svc.inbox')").fetchone() == (None,)
    finally:
        engine.dispose()


def test_an_unknown_version_is_refused(database_url: str) -> None:
    engine = sqlalchemy.create_engine(
        database_url.replace("postgresql://", "postgresql+psycopg://")
    )
    try:
        with engine.begin() as conn, pytest.raises(MigrationError, match="ships versions 1 to"):
            upgrade_inbox(
                Operations(MigrationContext.configure(conn)), from_version=0, to_version=99
            )
    finally:
        engine.dispose()


def test_alembic_on_an_inbox_made_by_migrate_applies_nothing(database_url: str) -> None:
    """A service adopting Alembic after `outbox-relay inbox migrate`: before, DuplicateTable."""
    assert [m.version for m in inbox_migrate.apply(database_url, "svc")] == [1]
    engine = sqlalchemy.create_engine(
        database_url.replace("postgresql://", "postgresql+psycopg://")
    )
    try:
        with engine.begin() as conn:
            create_inbox(Operations(MigrationContext.configure(conn)), version=1, schema="svc")
    finally:
        engine.dispose()
    assert inbox_migrate.apply(database_url, "svc") == []
