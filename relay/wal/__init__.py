"""WAL mode: the outbox's inserts, read from a logical replication slot (pgoutput).

* `relay.wal._core`: the pure hand-over bookkeeping (which streamed rows the sweep
  covered, what the slot may confirm, what parking stores).
* `relay.wal._source`: `WalSource`, the async driver that owns the connections and
  tasks and asks the core what to do; its docstring describes the hand-over.
"""

from relay.wal._core import AckTracker, HandOver, Snapshot, parked_copy
from relay.wal._source import (
    HEARTBEAT_PREFIX,
    INVALID_MESSAGE_TOPIC,
    MESSAGE_EVENT_ID_NAMESPACE,
    OUTBOX_COLUMNS,
    EnvelopeError,
    OutboxShape,
    RejectedMessage,
    SlotLostError,
    StreamDecoder,
    WalSource,
    WalTransaction,
    _Fetched,
    decode_envelope,
    event_from_row,
    message_event_id,
)

__all__ = [
    "HEARTBEAT_PREFIX",
    "INVALID_MESSAGE_TOPIC",
    "MESSAGE_EVENT_ID_NAMESPACE",
    "OUTBOX_COLUMNS",
    "AckTracker",
    "EnvelopeError",
    "HandOver",
    "OutboxShape",
    "RejectedMessage",
    "SlotLostError",
    "Snapshot",
    "StreamDecoder",
    "WalSource",
    "WalTransaction",
    "_Fetched",
    "decode_envelope",
    "event_from_row",
    "message_event_id",
    "parked_copy",
]
