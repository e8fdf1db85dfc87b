"""A TCP proxy in front of the test broker cuts every connection only when the broker
advertises the proxy: Kafka clients bootstrap once, then connect where the metadata says."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from relay._embedded import EmbeddedBroker
from tests.tcp_proxy import TcpProxy


async def send(producer: AIOKafkaProducer) -> bool:
    """True when the broker acknowledged a record within 5 s."""
    try:
        await asyncio.wait_for(producer.send_and_wait("proxied", b"x"), 5)
    except (KafkaError, TimeoutError):
        return False
    return True


async def test_a_blackholed_proxy_stops_produce_requests_and_heals(
    proxied_broker: tuple[EmbeddedBroker, TcpProxy],
) -> None:
    broker, proxy = proxied_broker
    assert broker.bootstrap_servers == proxy.address
    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap_servers, request_timeout_ms=2000, retry_backoff_ms=100
    )
    await producer.start()
    try:
        assert await send(producer)
        proxy.blackhole()
        assert not await send(producer)  # the produce connection goes through the proxy too
        proxy.heal()
        assert await send(producer)
    finally:
        await producer.stop()
