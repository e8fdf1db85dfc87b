"""A replication slot as the relay sees it while it streams, for the checks' unit tests."""

from __future__ import annotations

from typing import Final

from relay.slot import SlotStatus

GIB: Final = 1024**3

#: Healthy: active, reserved WAL, a whole GiB left before max_slot_wal_keep_size.
SLOT: Final = SlotStatus(
    slot_name="outbox_relay",
    plugin="pgoutput",
    database="app",
    in_this_database=True,
    active=True,
    active_pid=4242,
    wal_status="reserved",
    safe_wal_size=GIB,
    restart_lsn=0x16B3748,
    confirmed_flush_lsn=0x16B3780,
    retained_bytes=1024,
    unconfirmed_bytes=0,
    sender_state="streaming",
    flush_lag_seconds=0.001,
)
