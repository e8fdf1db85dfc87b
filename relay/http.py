"""The relay's HTTP endpoints: ``/healthz``, ``/readyz`` and ``/metrics``.

A tiny HTTP/1.1 server on `asyncio.start_server`: three GET routes for probes and
Prometheus do not justify a web framework. Every response closes its connection, so a
stop never waits on idle keep-alive clients. What a request gets is decided by `route`,
a pure function of the path, the metrics, the health state and the clock.

Usage (the ``run`` command does this when ``--http-port`` is above 0)::

    server = await relay.http.serve(settings.http_port, metrics, health)
    ...
    await relay.http.close(server)
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Final

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay.errors import ConfigError
from relay.health import Health
from relay.metrics import Metrics

#: A client gets this long to send its request line and headers.
REQUEST_TIMEOUT_S: Final = 5.0
#: Probes and scrapers send a handful of short headers; more is not a probe.
MAX_HEADER_LINES: Final = 100
MAX_LINE_BYTES: Final = 8192

_TEXT: Final = "text/plain; charset=utf-8"
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}

log = structlog.get_logger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    """What one request gets back."""

    status: int
    body: bytes
    content_type: str = _TEXT

    def encode(self, *, head: bool = False) -> bytes:
        """The response on the wire; a HEAD response carries the headers only."""
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Cache-Control: no-store",
            "Connection: close",
            "",
            "",
        ]
        return "\r\n".join(lines).encode("ascii") + (b"" if head else self.body)


def route(method: str, target: str, metrics: Metrics, health: Health, now_s: float) -> Response:
    """The response to ``method target`` (``target`` may carry a query string)."""
    path = target.split("?", 1)[0]
    if path not in {"/healthz", "/readyz", "/metrics"}:
        return Response(404, b"not found: try /healthz, /readyz or /metrics\n")
    if method not in {"GET", "HEAD"}:
        return Response(405, b"method not allowed: use GET\n")
    if path == "/healthz":
        # Liveness: answering proves the event loop runs; the health says the relay loop
        # is not wedged (see `Health.liveness`).
        alive, reason = health.liveness(now_s)
        return Response(200 if alive else 503, reason.encode() + b"\n")
    if path == "/readyz":
        ready, reason = health.readiness(now_s)
        return Response(200 if ready else 503, reason.encode() + b"\n")
    return Response(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str] | None:
    """The method and target of the request, or None when it is not HTTP."""
    request_line = await reader.readline()
    parts = request_line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):  # noqa: PLR2004
        return None
    for _ in range(MAX_HEADER_LINES):
        line = await reader.readline()
        if line in {b"\r\n", b"\n", b""}:
            return parts[0].upper(), parts[1]
    return None


def _handler(
    metrics: Metrics, health: Health, clock: Callable[[], float]
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                request = await asyncio.wait_for(_read_request(reader), REQUEST_TIMEOUT_S)
            except (TimeoutError, ValueError, asyncio.LimitOverrunError):
                request = None
            if request is None:
                writer.write(Response(400, b"bad request\n").encode())
            else:
                method, target = request
                response = route(method, target, metrics, health, clock())
                writer.write(response.encode(head=method == "HEAD"))
            await writer.drain()
        except ConnectionError:
            pass  # the client went away; nothing to answer
        finally:
            writer.close()

    return handle


async def serve(
    port: int,
    metrics: Metrics,
    health: Health,
    *,
    host: str = "0.0.0.0",  # noqa: S104 - a sidecar's probes come from outside the pod
    clock: Callable[[], float] = time.monotonic,
) -> asyncio.Server:
    """Start serving the endpoints on `host`:`port` (0: any free port) and return the server.

    `clock` must be the clock `health` was updated with (monotonic seconds).
    Stop it with `close`. Raises `ConfigError` when the port cannot be bound.
    """
    try:
        server = await asyncio.start_server(
            _handler(metrics, health, clock), host, port, limit=MAX_LINE_BYTES
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot serve http on {host}:{port}: {exc.strerror or exc} (see --http-port)"
        ) from None
    log.info("http endpoints listening", host=host, port=bound_port(server))
    return server


def bound_port(server: asyncio.Server) -> int:
    """The port `server` listens on (useful after ``serve(0, ...)``)."""
    port: int = server.sockets[0].getsockname()[1]
    return port


async def close(server: asyncio.Server) -> None:
    """Stop accepting connections and wait for the requests in progress."""
    server.close()
    await server.wait_closed()
