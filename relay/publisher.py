"""The publisher: the relay's only door to Kafka.

The relay loop sees only the `Publisher` protocol; `KafkaPublisher` implements it with
aiokafka. A fake that records what it was given lives in `relay.testing`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from relay.events import OutboxEvent, PublishResult


class Publisher(Protocol):
    """Sends events to Kafka and says, per event, whether the broker acknowledged it."""

    async def start(self) -> None:
        """Connect to the cluster; raise `relay.errors.BrokerError` when it cannot."""

    async def stop(self) -> None:
        """Flush what is in flight and disconnect."""

    async def publish(self, events: Sequence[OutboxEvent]) -> PublishResult:
        """Publish `events` and wait until each is acknowledged or has failed.

        Events with the same key go to the same partition in the order given. Calls may
        overlap (the relay pipelines batches); the order across calls is the call order.
        """
        ...
