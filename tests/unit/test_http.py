"""The HTTP endpoints, served in-process from a Metrics and Health the test drives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from relay import http
from relay.errors import ConfigError
from relay.health import Health
from relay.metrics import Metrics


def ready_health(now_s: float = 100.0) -> Health:
    return Health(database_connected=True, broker_connected=True, last_progress_s=now_s)


def test_healthz_is_ok_even_when_not_ready() -> None:
    response = http.route("GET", "/healthz", Metrics(), Health(), 0.0)
    assert (response.status, response.body) == (200, b"ok\n")


def test_healthz_is_503_while_the_leaders_loop_is_wedged() -> None:
    health = ready_health()
    health.set_leader(leader=True, now_s=0.0)
    health.loop_started(0.0)
    wedged = http.route("GET", "/healthz", Metrics(), health, health.wedged_after_s + 1)
    assert wedged.status == 503
    assert wedged.body == b"wedged: the relay loop has not come round for 301 s\n"
    health.loop_turned(health.wedged_after_s + 1, {})
    alive = http.route("GET", "/healthz", Metrics(), health, health.wedged_after_s + 2)
    assert (alive.status, alive.body) == (200, b"ok\n")


def test_readyz_reports_the_reason_when_not_ready() -> None:
    health = ready_health()
    health.broker_connected = False
    response = http.route("GET", "/readyz", Metrics(), health, 100.0)
    assert response.status == 503
    assert response.body == b"not connected to the broker\n"


def test_readyz_is_503_when_stalled_and_200_again_after_progress() -> None:
    health = ready_health(now_s=0.0)
    health.leader = True
    health.pending_events = 7
    stalled = http.route("GET", "/readyz", Metrics(), health, health.stall_after_s + 1)
    assert stalled.status == 503
    assert b"stalled: 7 events pending" in stalled.body
    health.progressed(health.stall_after_s + 1)
    assert http.route("GET", "/readyz", Metrics(), health, health.stall_after_s + 2).status == 200


def test_metrics_is_prometheus_text_with_the_relay_metrics() -> None:
    metrics = Metrics()
    metrics.events_published.labels(topic="orders").inc(3)
    response = http.route("GET", "/metrics?x=1", metrics, Health(), 0.0)
    assert response.status == 200
    assert response.content_type.startswith("text/plain; version=")
    assert b'outbox_relay_events_published_total{topic="orders"} 3.0' in response.body


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/", 404), ("GET", "/metricsx", 404), ("POST", "/metrics", 405)],
)
def test_unknown_paths_and_methods_are_refused(method: str, path: str, status: int) -> None:
    assert http.route(method, path, Metrics(), Health(), 0.0).status == status


def test_head_response_has_headers_but_no_body() -> None:
    encoded = http.Response(200, b"ok\n").encode(head=True)
    assert encoded.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 3\r\n" in encoded
    assert encoded.endswith(b"\r\n\r\n")


async def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)  # the server closes the connection
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n".encode()


@pytest.fixture
async def served() -> AsyncIterator[tuple[int, Metrics, Health]]:
    metrics, health = Metrics(), ready_health()
    server = await http.serve(0, metrics, health, host="127.0.0.1", clock=lambda: 100.0)
    yield http.bound_port(server), metrics, health
    await http.close(server)


async def test_server_answers_probes_and_follows_the_state(
    served: tuple[int, Metrics, Health],
) -> None:
    port, metrics, health = served
    assert (await request(port, get("/healthz")))[0] == 200
    assert (await request(port, get("/readyz")))[0] == 200

    health.database_connected = False
    status, _, body = await request(port, get("/readyz"))
    assert (status, body) == (503, b"not connected to PostgreSQL\n")

    metrics.events_published.labels(topic="orders").inc(5)
    status, headers, body = await request(port, get("/metrics"))
    assert status == 200
    assert headers["Connection"] == "close"
    assert int(headers["Content-Length"]) == len(body)
    assert b'outbox_relay_events_published_total{topic="orders"} 5.0' in body


async def test_server_refuses_garbage_without_dying(served: tuple[int, Metrics, Health]) -> None:
    port, _, _ = served
    assert (await request(port, b"hello\r\n\r\n"))[0] == 400
    assert (await request(port, b"GET /" + b"x" * 20_000 + b" HTTP/1.1\r\n\r\n"))[0] == 400
    assert (await request(port, get("/healthz")))[0] == 200


async def test_a_taken_port_is_a_one_line_config_error(
    served: tuple[int, Metrics, Health],
) -> None:
    port, metrics, health = served
    with pytest.raises(ConfigError, match=rf"cannot serve http on 127.0.0.1:{port}"):
        await http.serve(port, metrics, health, host="127.0.0.1")
