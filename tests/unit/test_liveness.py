"""/healthz and the source's connections through the relay loop (in-memory fakes).

The probe logic itself is in test_probe_model.py; these check what the loop feeds it: a
fetch that never returns stops the turns (wedged), a broker outage does not, and the
source's connection problems reach /readyz.
"""

# ruff: noqa: ASYNC110 - polling the fakes' state is the simplest honest wait here

from __future__ import annotations

import asyncio
from collections.abc import Callable

from relay.events import PublishFailure
from relay.health import CONNECTION_GRACE_S, Health, wedged_after_s
from relay.health import WEDGED_AFTER_S as WEDGED_AFTER_S_DEFAULT
from relay.loop import LoopConfig, RelayLoop
from relay.source import ConnectionProblem
from relay.testing import InMemorySource, RecordingPublisher, make_event

CONFIG = LoopConfig(batch_size=4, poll_interval_s=0.01, backoff_base_s=0.001, backoff_max_s=0.005)
WEDGED_AFTER_S = 100.0
RETRY = PublishFailure("KafkaConnectionError: no broker", retriable=True)


class Clock:
    """The monotonic clock of the loop and the probes, moved by the test."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def leader_health(clock: Clock) -> Health:
    health = Health(wedged_after_s=WEDGED_AFTER_S, last_turn_s=clock.now_s)
    health.set_leader(leader=True, now_s=clock.now_s)
    return health


async def until(done: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not done():
            await asyncio.sleep(0.005)


async def test_a_fetch_that_never_returns_fails_healthz_until_it_returns() -> None:
    clock = Clock()
    health = leader_health(clock)
    source = InMemorySource([make_event(n, key=f"k{n}") for n in range(1, 9)])
    publisher = RecordingPublisher()
    loop = RelayLoop(source, publisher, CONFIG, health=health, monotonic=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        await until(lambda: len(publisher.published) == 8)
        source.unhung.clear()  # the next fetch waits on a dead socket
        await asyncio.sleep(0.05)
        clock.now_s += WEDGED_AFTER_S - 1
        assert health.liveness(clock.now_s) == (True, "ok")
        clock.now_s += 2
        alive, reason = health.liveness(clock.now_s)
        assert not alive
        assert reason == "wedged: the relay loop has not come round for 101 s"
        source.unhung.set()
        await until(lambda: health.liveness(clock.now_s) == (True, "ok"))
    finally:
        stop.set()
        source.unhung.set()
        await asyncio.wait_for(task, 5)


async def test_a_broker_outage_fails_readyz_never_healthz() -> None:
    """Restarting would not bring the broker back: the relay stays alive, not ready."""
    clock = Clock()
    health = leader_health(clock)
    source = InMemorySource([make_event(n, key=f"k{n}") for n in range(1, 9)])
    publisher = RecordingPublisher(lambda _event: RETRY)
    loop = RelayLoop(source, publisher, CONFIG, health=health, monotonic=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        for _ in range(20):  # ten times the wedge bound without one event through
            clock.now_s += WEDGED_AFTER_S / 2
            calls = publisher.calls + 2
            await until(lambda: publisher.calls >= calls)  # noqa: B023 - awaited here
            assert health.liveness(clock.now_s) == (True, "ok")
        assert health.readiness(clock.now_s) == (
            False,
            "not connected to the broker: KafkaConnectionError: no broker",
        )
        assert not publisher.published
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_the_sources_connection_problems_reach_readyz() -> None:
    clock = Clock()
    health = leader_health(clock)
    health.broker_answered(None)
    source = InMemorySource()
    loop = RelayLoop(source, RecordingPublisher(), CONFIG, health=health, monotonic=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        await until(lambda: health.readiness(clock.now_s) == (True, "ready"))
        down = ConnectionProblem("terminating connection due to administrator command", 1000.0)
        source.problems = {"WAL stream": down}
        await asyncio.sleep(0.05)
        assert health.readiness(clock.now_s) == (True, "ready")  # within the grace
        clock.now_s += CONNECTION_GRACE_S + 1
        assert health.readiness(clock.now_s) == (
            False,
            (
                "not connected to PostgreSQL: WAL stream connection down: "
                "terminating connection due to administrator command"
            ),
        )
        source.problems = {}
        await until(lambda: health.readiness(clock.now_s) == (True, "ready"))
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


def test_the_wedge_bound_outlasts_a_publish() -> None:
    """A publish may wait several request timeouts: a slow broker is not a wedge."""
    assert wedged_after_s(30.0) == WEDGED_AFTER_S_DEFAULT
    assert wedged_after_s(120.0) > 4 * 120.0
