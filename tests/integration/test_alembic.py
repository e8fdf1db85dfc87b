from __future__ import annotations

import io
import subprocess
from pathlib import Path

import psycopg
import pytest
import sqlalchemy
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.operations import Operations

from relay._embedded import EmbeddedPostgres
from relay.alembic import create_outbox, latest_version, upgrade_outbox
from relay.errors import ConfigError, MigrationError
from tests.support import run_cli

ENV_PY = """
from alembic import context
from sqlalchemy import create_engine

config = context.config
url = config.get_main_option("sqlalchemy.url")
if context.is_offline_mode():
    context.configure(url=url, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
"""

REVISION = """
from alembic import op

from relay.alembic import create_outbox, drop_outbox

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox(op, version={version}{arguments})


def downgrade() -> None:
    drop_outbox(op{arguments})
"""

# A later outbox-relay's migrations, as the service adds them: one revision upgrading.
UPGRADE_REVISION = """
from alembic import op

from relay.alembic import upgrade_outbox

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    upgrade_outbox(op, from_version=1, to_version={latest}{arguments})


def downgrade() -> None:
    pass
"""


def _alembic(tmp_path: Path, database_url: str, arguments: str = "") -> Config:
    """An Alembic project whose only revision adds the outbox with `arguments`."""
    (tmp_path / "versions").mkdir()
    (tmp_path / "env.py").write_text(ENV_PY)
    (tmp_path / "versions" / "0001_outbox.py").write_text(
        REVISION.format(arguments=arguments, version=1)
    )
    (tmp_path / "versions" / "0002_outbox_upgrade.py").write_text(
        UPGRADE_REVISION.format(arguments=arguments, latest=latest_version())
    )
    config = Config(output_buffer=io.StringIO())
    config.set_main_option("script_location", str(tmp_path))
    config.set_main_option(
        "sqlalchemy.url", database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    )
    return config


def _schema(postgres: EmbeddedPostgres, url: str) -> str:
    dump = subprocess.run(
        [
            str(postgres.bindir / "pg_dump"),
            "--schema-only",
            "--no-owner",
            "--exclude-table=alembic_version",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # pg_dump prints a random \restrict token on some builds; it is not schema.
    return "\n".join(line for line in dump.splitlines() if not line.startswith("\\"))


def test_alembic_upgrade_gives_the_schema_of_migrate_and_downgrade_removes_it(
    tmp_path: Path, postgres: EmbeddedPostgres, empty_database_url: str, database_url: str
) -> None:
    # database_url was migrated by relay.migrate (the template), as `outbox-relay migrate`.
    empty = _schema(postgres, empty_database_url)
    config = _alembic(tmp_path, empty_database_url)

    command.upgrade(config, "head")
    assert _schema(postgres, empty_database_url) == _schema(postgres, database_url)
    again = run_cli("migrate", "--database-url", empty_database_url)
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout  # the version table agrees with Alembic
    with psycopg.connect(empty_database_url) as conn:
        conn.execute("SELECT outbox_publish('orders', 'k', '{}')")

    command.downgrade(config, "base")
    assert _schema(postgres, empty_database_url) == empty


def test_alembic_offline_sql_for_another_outbox_matches_migrate(
    tmp_path: Path, postgres: EmbeddedPostgres, empty_database_url: str, database_url: str
) -> None:
    arguments = ', schema="events", table="outbox_v2", publication="v2_pub"'
    config = _alembic(tmp_path, empty_database_url, arguments)
    command.upgrade(config, "head", sql=True)
    offline_sql = config.output_buffer.getvalue()  # type: ignore[union-attr]
    assert 'CREATE TABLE "events"."outbox_v2"' in offline_sql
    applied = subprocess.run(
        [
            str(postgres.bindir / "psql"),
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-d",
            empty_database_url,
        ],
        input=offline_sql,
        text=True,
        check=False,
        capture_output=True,
    )
    assert applied.returncode == 0, applied.stderr
    migrated = run_cli(
        "migrate", "--database-url", database_url,
        "--schema", "events", "--table", "outbox_v2", "--publication", "v2_pub",
    )  # fmt: skip
    assert migrated.returncode == 0, migrated.stderr
    # database_url also holds public.outbox from the template: compare the events schema.
    assert _events_schema(postgres, empty_database_url) == _events_schema(postgres, database_url)


def _events_schema(postgres: EmbeddedPostgres, url: str) -> str:
    dump = subprocess.run(
        [str(postgres.bindir / "pg_dump"), "--schema-only", "--no-owner", "-n", "events", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return "\n".join(line for line in dump.splitlines() if not line.startswith("\\"))


class RecordingOperations:
    """Alembic's offline mode: statements are recorded, nothing is asked of a database."""

    as_sql = True

    def __init__(self) -> None:
        self.executed: list[object] = []

    def execute(self, sqltext: object, /) -> object:
        self.executed.append(sqltext)
        return None

    def get_context(self) -> RecordingOperations:
        return self

    def get_bind(self) -> sqlalchemy.Connection:
        raise AssertionError("offline: no connection")


@pytest.mark.parametrize(("from_version", "to_version"), [(0, 0), (1, 1), (0, 99), (-1, 1)])
def test_versions_outside_what_is_shipped_are_refused(from_version: int, to_version: int) -> None:
    op = RecordingOperations()
    shipped = f"this outbox-relay ships versions 1 to {latest_version()}"
    with pytest.raises(MigrationError, match=shipped):
        upgrade_outbox(op, from_version=from_version, to_version=to_version)
    assert op.executed == []


def test_names_are_checked_like_the_settings() -> None:
    op = RecordingOperations()
    with pytest.raises(ConfigError, match="invalid table"):
        create_outbox(op, version=1, table="outbox; drop table x")
    assert op.executed == []


def test_alembic_on_an_outbox_made_by_migrate_applies_only_what_is_not_recorded(
    tmp_path: Path, postgres: EmbeddedPostgres, database_url: str
) -> None:
    """A service adopting Alembic after `outbox-relay migrate`: before, DuplicateTable."""
    before = _schema(postgres, database_url)
    command.upgrade(_alembic(tmp_path, database_url), "head")
    assert _schema(postgres, database_url) == before


def _revision_in_a_transaction(engine: sqlalchemy.Engine, table: str, publication: str) -> None:
    """`create_outbox` as a revision runs it online: in a transaction, rolled back on error."""
    with engine.begin() as conn:
        op = Operations(MigrationContext.configure(conn))
        create_outbox(op, version=1, table=table, publication=publication)


def test_a_name_held_by_another_table_is_one_line_and_alembic_takes_everything_back(
    database_url: str,
) -> None:
    # public.outbox's lease table is public.outbox_leader: an outbox of that name collides.
    engine = sqlalchemy.create_engine(
        database_url.replace("postgresql://", "postgresql+psycopg://")
    )
    try:
        with pytest.raises(MigrationError) as caught:
            _revision_in_a_transaction(engine, table="outbox_leader", publication="p2")
    finally:
        engine.dispose()
    assert str(caught.value) == (
        'outbox migration failed: relation "outbox_leader" already exists, and not as this '
        "outbox's (its version table does not record it): choose another table= or schema=, "
        "or rename what holds the name"
    )
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT to_regclass('public.outbox_leader_migrations')").fetchone()
    assert row == (None,)
