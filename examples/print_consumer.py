"""An example consumer: prints every event the relay puts on a topic.

    BOOTSTRAP_SERVERS=localhost:9092 TOPIC=orders python examples/print_consumer.py

Each record carries an ``event_id`` header: a consumer that must not act twice on an
event (the relay delivers at least once) remembers the ids it has processed.
"""

from __future__ import annotations

import asyncio
import os

from aiokafka import AIOKafkaConsumer


async def main() -> None:
    """Print records until stopped."""
    consumer = AIOKafkaConsumer(
        os.environ.get("TOPIC", "orders"),
        bootstrap_servers=os.environ.get("BOOTSTRAP_SERVERS", "localhost:9092"),
        group_id=os.environ.get("GROUP_ID", "print-consumer"),
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        async for record in consumer:
            headers = {name: value.decode(errors="replace") for name, value in record.headers}
            print(
                f"{record.topic}[{record.partition}]@{record.offset} "
                f"key={record.key.decode() if record.key else None} "
                f"type={headers.get('event_type')} event_id={headers.get('event_id')} "
                f"traceparent={headers.get('traceparent')} value={record.value!r}",
                flush=True,
            )
    finally:
        await consumer.stop()


if __name__ == "__main__":
    asyncio.run(main())
