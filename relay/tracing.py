"""Optional OpenTelemetry: a publish span linked to the traces that wrote the events.

The trace context itself needs no OpenTelemetry: a row's ``traceparent`` and
``tracestate`` headers travel to the Kafka record headers unchanged, like every other
header, so consumers continue the writer's trace. With ``opentelemetry-api`` installed
(``pip install 'outbox-relay[otel]'``) and a tracer provider configured by the
application, the relay also records one ``send`` span per batch, linked to each event's
trace. Without it, `publish_span` does nothing and costs nothing.

Usage, in a publisher::

    with publish_span(events):
        ...  # produce the batch and wait for the acknowledgements
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import Any, Final

from relay.events import OutboxEvent

TRACE_HEADERS: Final = ("traceparent", "tracestate")
#: OpenTelemetry SDKs keep 128 links per span by default; more would be dropped anyway.
MAX_LINKS: Final = 128
TRACER_NAME: Final = "outbox-relay"


def trace_carrier(event: OutboxEvent) -> dict[str, str]:
    """The W3C trace-context headers of `event` (empty when the writer sent none)."""
    carrier: dict[str, str] = {}
    for name, value in event.headers:
        if name in TRACE_HEADERS and name not in carrier:
            with contextlib.suppress(UnicodeDecodeError):
                carrier[name] = value.decode("ascii")
    return carrier


def span_name(events: Sequence[OutboxEvent]) -> str:
    """``send <topic>`` when the batch goes to one topic, else ``send`` (OTel conventions)."""
    topics = {event.topic for event in events}
    return f"send {topics.pop()}" if len(topics) == 1 else "send"


@functools.cache
def _otel() -> tuple[Any, Any] | None:
    """The ``opentelemetry.trace`` module and a W3C propagator, or None when not installed."""
    try:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        return None
    return trace, TraceContextTextMapPropagator()


def available() -> bool:
    """True when ``opentelemetry-api`` is installed."""
    return _otel() is not None


@contextlib.contextmanager
def publish_span(
    events: Sequence[OutboxEvent], *, tracer_provider: object | None = None
) -> Iterator[None]:
    """A producer span around publishing `events`, linked to each event's ``traceparent``.

    A no-op without OpenTelemetry. `tracer_provider` defaults to the global one the
    application configured (none configured: OpenTelemetry's own no-op).
    """
    otel = _otel()
    if otel is None or not events:
        yield
        return
    trace, propagator = otel
    links = []
    for event in events:
        carrier = trace_carrier(event)
        if not carrier:
            continue
        context = trace.get_current_span(propagator.extract(carrier)).get_span_context()
        if context.is_valid:
            links.append(trace.Link(context, {"messaging.message.id": event.event_id}))
            if len(links) == MAX_LINKS:
                break
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.batch.message_count": len(events),
    }
    topics = {event.topic for event in events}
    if len(topics) == 1:
        attributes["messaging.destination.name"] = next(iter(topics))
    tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)
    with tracer.start_as_current_span(
        span_name(events), kind=trace.SpanKind.PRODUCER, links=links, attributes=attributes
    ):
        yield
