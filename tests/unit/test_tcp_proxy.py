"""The tests' TCP proxy cuts the network the three ways the fault tests need."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.tcp_proxy import TcpProxy


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(1024):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    stop.set()
    server.shutdown(socket.SHUT_RDWR)
    server.close()


def round_trip(port: int, sock: socket.socket | None = None) -> bytes:
    if sock is None:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as fresh:
            return round_trip(port, fresh)
    sock.sendall(b"ping")
    return sock.recv(4)


def test_forward_refuse_blackhole_heal(echo_port: int) -> None:
    with TcpProxy("127.0.0.1", echo_port) as proxy:
        kept = socket.create_connection(("127.0.0.1", proxy.port), timeout=1)
        assert round_trip(proxy.port, kept) == b"ping"

        proxy.refuse()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=1)
        with contextlib.suppress(ConnectionResetError):  # the open connection ended
            assert kept.recv(4) == b""
        kept.close()
        proxy.heal()
        assert round_trip(proxy.port) == b"ping"

        proxy.blackhole()
        held = socket.create_connection(("127.0.0.1", proxy.port), timeout=1)
        held.sendall(b"ping")
        with pytest.raises(TimeoutError):  # open, and silent
            held.recv(4)
        held.close()
        proxy.heal()
        assert round_trip(proxy.port) == b"ping"


def test_it_counts_what_it_forwards_to_the_target_and_not_what_it_swallows(
    echo_port: int,
) -> None:
    with TcpProxy("127.0.0.1", echo_port) as proxy:
        assert round_trip(proxy.port) == b"ping"
        assert proxy.forwarded_upstream == 4  # the echo coming back is not counted
        proxy.blackhole()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=0.5) as held:
            held.sendall(b"ping")
            with pytest.raises(TimeoutError):
                held.recv(4)
        assert proxy.forwarded_upstream == 4
