"""The publisher protocol: the relay loop's only door to Kafka.

The relay loop sees only `Publisher`; `relay.kafka.KafkaPublisher` implements it with
aiokafka, and `relay.testing` has a fake that records what it was given. This module
imports neither, so the loop stays free of aiokafka (a test says so).
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

        Events with the same key go to the same partition in the order given, and an
        event that fails holds back the later events of its key in this call: they are
        reported as retriable failures without being sent. Calls may overlap; the order
        across calls is the call order. Never raises for a broker problem: failures are
        reported per event.
        """
        ...
