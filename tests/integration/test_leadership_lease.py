"""Leadership is a lease only the relay's role may take: no other role takes or blocks it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import structlog
from psycopg import errors

from relay import decisions
from relay._embedded import EmbeddedBroker
from relay.config import Settings
from relay.leadership import Leadership
from relay.run import Relay
from tests.integration.poll_stack import async_wait_until
from tests.integration.test_roles import Roles, _drop_roles, _grant
from tests.support import run_cli


@pytest.fixture
def roles(database_url: str) -> Iterator[Roles]:
    suffix = uuid.uuid4().hex[:8]
    created = Roles(relay=f"relay_{suffix}", app=f"intruder_{suffix}")
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name in (created.relay, created.app):
            conn.execute(f'CREATE ROLE "{name}" LOGIN')
    yield created
    _drop_roles(database_url, [created.relay, created.app])


def _as(database_url: str, role: str) -> str:
    return database_url.replace("postgres@", f"{role}@", 1)


async def _acquire(leadership: Leadership, timeout_s: float) -> bool:
    stop = asyncio.Event()
    try:
        return await asyncio.wait_for(leadership.acquire(stop), timeout_s)
    except TimeoutError:
        stop.set()
        return False


async def test_a_foreign_role_holding_the_old_lock_id_does_not_stop_the_relay(
    database_url: str, roles: Roles
) -> None:
    _grant(database_url, roles)
    lock_id = decisions.lock_id_for("public", "outbox")
    with psycopg.connect(_as(database_url, roles.app), autocommit=True) as intruder:
        assert intruder.execute("SELECT pg_try_advisory_lock(%s)", (lock_id,)).fetchone() == (True,)
        # The lease row is out of its reach, to take or to lock.
        for statement in (
            "UPDATE outbox_leader SET pid = pg_backend_pid(), leader_until = 'infinity'",
            "SELECT * FROM outbox_leader FOR UPDATE",
            "LOCK TABLE outbox_leader",
        ):
            with pytest.raises(errors.InsufficientPrivilege), intruder.transaction():
                intruder.execute(statement)
        leadership = Leadership(_as(database_url, roles.relay), lock_id)
        assert await _acquire(leadership, 10)
        holder = await leadership.holder()
        assert holder is not None
        assert holder.held
        assert holder.role == roles.relay
        shown = run_cli("status", "--json", "--database-url", database_url)
        assert json.loads(shown.stdout)["leader"] | {"leader_since": None} == {
            "leader_pid": holder.pid,
            "leader_role": roles.relay,
            "leader_application_name": "outbox-relay leadership",
            "leader_epoch": holder.epoch,
            "leader_since": None,
            "held": True,
        }
        assert (
            f"leader: pid {holder.pid}  role {roles.relay}"
            in run_cli("status", "--database-url", database_url).stdout
        )
        await leadership.release()


async def test_a_killed_leader_is_replaced_within_seconds_and_named_meanwhile(
    database_url: str, roles: Roles
) -> None:
    _grant(database_url, roles)
    url = _as(database_url, roles.relay)
    first = Leadership(url, retry_interval_s=0.1)
    second = Leadership(url, retry_interval_s=0.1, holder_warn_after_s=0.3)
    assert await _acquire(first, 10)
    with structlog.testing.capture_logs() as logs:
        assert not await _acquire(second, 1.0)
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert warnings, logs
    holder = await first.holder()
    assert holder is not None
    assert warnings[0]["leader_pid"] == holder.pid
    assert warnings[0]["leader_role"] == roles.relay
    assert warnings[0]["leader_application_name"] == "outbox-relay leadership"
    with psycopg.connect(database_url, autocommit=True) as owner:
        owner.execute("SELECT pg_terminate_backend(%s)", (holder.pid,))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await _acquire(second, 10)
    assert loop.time() - started < 5
    await asyncio.wait_for(first.lost.wait(), 10)
    assert second.epoch is not None
    assert second.epoch > holder.epoch
    await first.release()
    await second.release()


async def test_a_released_lease_is_taken_at_once_and_a_stale_leader_learns_it_lost(
    database_url: str,
) -> None:
    first = Leadership(database_url, retry_interval_s=0.1, check_interval_s=0.2)
    second = Leadership(database_url, retry_interval_s=0.1)
    assert await _acquire(first, 10)
    # The lease ran out (a leader that hung): another takes it; the old one stops.
    with psycopg.connect(database_url, autocommit=True) as owner:
        owner.execute("UPDATE outbox_leader SET leader_until = now() - interval '1 s'")
    assert await _acquire(second, 5)
    await asyncio.wait_for(first.lost.wait(), 5)
    await first.release()
    holder = await second.holder()
    assert holder is not None
    assert holder.held  # the old leader's release did not free the new one's lease
    await second.release()
    third = Leadership(database_url, retry_interval_s=0.1)
    assert await _acquire(third, 2)
    await third.release()


async def test_a_standby_reports_the_backlog_while_another_relay_leads(
    settings: Settings,
) -> None:
    holder = Leadership(settings.database_url, retry_interval_s=0.1)
    assert await _acquire(holder, 10)
    with psycopg.connect(settings.database_url, autocommit=True) as owner:
        owner.execute("SELECT outbox_publish('standby', 'k', '{}') FROM generate_series(1, 3)")
    relay = Relay(settings)
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    try:
        await async_wait_until(
            "the standby reports 3 pending events",
            lambda: relay.metrics.pending_events._value.get() == 3,
        )
        assert relay.metrics.oldest_unsent_age._value.get() > 0
        assert not relay.health.leader
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        await holder.release()


def test_a_relay_role_without_the_lease_grant_is_one_clear_line(
    database_url: str, roles: Roles, broker: EmbeddedBroker
) -> None:
    with psycopg.connect(database_url, autocommit=True) as owner:
        owner.execute(f'GRANT SELECT, UPDATE, DELETE ON outbox TO "{roles.relay}"')
    result = run_cli(
        "run", "--database-url", _as(database_url, roles.relay),
        "--bootstrap-servers", broker.bootstrap_servers, "--log-level", "error",
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "outbox-relay: error: this role may not take the leadership lease public.outbox_leader: "
        "run `outbox-relay grants --relay-role ...` (SELECT, UPDATE on it)"
    )
