"""The optional publish span: linked to each event's traceparent, a no-op without OTel."""

from __future__ import annotations

import sys
import uuid

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from relay import tracing
from relay.events import OutboxEvent

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


def event(topic: str = "orders", headers: dict[str, str] | None = None) -> OutboxEvent:
    event_id = str(uuid.uuid4())
    all_headers = {"event_id": event_id} | (headers or {})
    return OutboxEvent(
        id=1,
        event_id=event_id,
        topic=topic,
        key="k",
        value=b"{}",
        headers=tuple((name, value.encode()) for name, value in all_headers.items()),
    )


def recorder() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_trace_carrier_takes_only_the_w3c_headers() -> None:
    traced = event(headers={"traceparent": TRACEPARENT, "tracestate": "congo=t61", "x": "y"})
    assert tracing.trace_carrier(traced) == {"traceparent": TRACEPARENT, "tracestate": "congo=t61"}
    assert tracing.trace_carrier(event()) == {}


def test_span_name_names_the_topic_of_a_single_topic_batch() -> None:
    assert tracing.span_name([event("a"), event("a")]) == "send a"
    assert tracing.span_name([event("a"), event("b")]) == "send"


def test_publish_span_links_each_traced_event() -> None:
    provider, exporter = recorder()
    traced = event(headers={"traceparent": TRACEPARENT, "tracestate": "congo=t61"})
    untraced = event()
    broken = event(headers={"traceparent": "00-garbage"})
    with tracing.publish_span([traced, untraced, broken], tracer_provider=provider):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.name == "send orders"
    assert span.kind is SpanKind.PRODUCER
    assert span.attributes is not None
    assert span.attributes["messaging.batch.message_count"] == 3
    assert span.attributes["messaging.destination.name"] == "orders"
    (link,) = span.links
    assert f"{link.context.trace_id:032x}" == TRACE_ID
    assert f"{link.context.span_id:016x}" == SPAN_ID
    assert link.context.trace_state.get("congo") == "t61"
    assert link.attributes == {"messaging.message.id": traced.event_id}


def test_publish_span_records_a_failed_publish() -> None:
    provider, exporter = recorder()
    with (
        pytest.raises(RuntimeError),
        tracing.publish_span([event()], tracer_provider=provider),
    ):
        raise RuntimeError("broker gone")
    (span,) = exporter.get_finished_spans()
    assert not span.status.is_ok


def test_without_opentelemetry_publish_span_does_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    tracing._otel.cache_clear()
    try:
        assert not tracing.available()
        with tracing.publish_span([event(headers={"traceparent": TRACEPARENT})]):
            ran = True
        assert ran
    finally:
        monkeypatch.undo()
        tracing._otel.cache_clear()
    assert tracing.available()
