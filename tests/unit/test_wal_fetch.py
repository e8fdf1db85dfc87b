"""`WalSource.fetch` is cancel-safe: a cancelled fetch loses no queued event."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from relay.config import Mode, Settings
from relay.events import OutboxEvent
from relay.wal import WalSource


class _Open:
    """Stands for a connection that is up (fetch only asks whether it broke)."""

    broken = False


def event(id_: int, key: str) -> OutboxEvent:
    return OutboxEvent(
        id=id_, event_id=str(id_), topic="t", key=key, value=None, headers=(), lsn=100
    )


async def test_a_fetch_cancelled_while_holding_a_message_back_keeps_every_event() -> None:
    source = WalSource(Settings(mode=Mode.WAL))
    connected: Any = _Open()
    source._replication = connected
    source._conn = connected
    source._sweep_conn = connected
    source._parked_checked_s = time.monotonic()  # no parked-row refresh in this fetch
    source._parked_keys = {"held": 0}
    holding = asyncio.Event()

    async def hold_forever(_event: OutboxEvent) -> None:
        holding.set()
        await asyncio.Event().wait()

    source._hold_message = hold_forever  # type: ignore[method-assign,assignment]
    queued = [event(1, "a"), event(0, "held"), event(3, "a")]
    source._queue.extend(queued)
    fetching = asyncio.create_task(source.fetch(10))
    await holding.wait()
    fetching.cancel()
    await asyncio.gather(fetching, return_exceptions=True)
    assert list(source._queue) == queued
    assert source._fetched.events == []
