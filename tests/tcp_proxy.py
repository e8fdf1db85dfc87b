"""A small TCP proxy of the tests' own, to cut the network without stopping a server.

The broker keeps its data (tansu here stores in memory, so stopping it would lose every
record); the proxy in front of it breaks the path the way networks break:

* `refuse`: existing connections are reset and new ones are refused (the port closes),
  as when a broker's host is up but its process is gone;
* `blackhole`: connections stay open but nothing is forwarded any more, either way, as
  when a firewall starts dropping packets: only timeouts and keepalives can tell;
* `heal`: forwarding as before (the port opens again after `refuse`).

Threads, not asyncio, so sync tests and scripts can use it as well as async ones.
"""

from __future__ import annotations

import contextlib
import enum
import socket
import struct
import threading
from types import TracebackType
from typing import Self

BUFFER_BYTES = 65536


class State(enum.Enum):
    """What the proxy does with traffic."""

    FORWARD = "forward"
    REFUSE = "refuse"
    BLACKHOLE = "blackhole"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _reset(sock: socket.socket) -> None:
    """End the connection as a dead process's kernel does, and free the socket.

    shutdown() first: it wakes the pump blocked in recv() on this socket, which close()
    from another thread would not, and the peer sees the end of the stream.
    """
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to `target`; `refuse`, `blackhole` and `heal` at will."""

    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or _free_port()
        self.state = State.FORWARD
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener: socket.socket | None = None
        self._closed = threading.Event()
        self._acceptor: threading.Thread | None = None
        #: Bytes forwarded from clients to the target so far: what proves that traffic
        #: (a Kafka client's produce requests, say) went through the proxy at all.
        self.forwarded_upstream = 0

    @property
    def address(self) -> str:
        """``host:port`` for clients."""
        return f"127.0.0.1:{self.port}"

    # -- control ------------------------------------------------------------------------

    def start(self) -> None:
        """Listen and forward."""
        self._listen()

    def refuse(self) -> None:
        """Reset every connection and close the port."""
        with self._lock:
            self.state = State.REFUSE
            pairs, self._pairs = self._pairs, []
            listener, self._listener = self._listener, None
        if listener is not None:
            # close() alone leaves the thread blocked in accept() holding the port.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
            if self._acceptor is not None:
                self._acceptor.join(5)
        for client, upstream in pairs:
            _reset(client)
            _reset(upstream)

    def blackhole(self) -> None:
        """Keep every connection open and forward nothing, new connections included."""
        with self._lock:
            self.state = State.BLACKHOLE
        if self._listener is None:
            self._listen()

    def heal(self) -> None:
        """Forward again; connections blackholed meanwhile are reset (their bytes are gone)."""
        with self._lock:
            was = self.state
            self.state = State.FORWARD
            pairs = self._pairs if was is State.BLACKHOLE else []
            if was is State.BLACKHOLE:
                self._pairs = []
        for client, upstream in pairs:
            _reset(client)
            _reset(upstream)
        if self._listener is None:
            self._listen()

    def close(self) -> None:
        """Stop for good."""
        self._closed.set()
        self.refuse()

    # -- the plumbing -------------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        with self._lock:
            self._listener = listener
        self._acceptor = threading.Thread(
            target=self._accept, args=(listener,), name="proxy-accept", daemon=True
        )
        self._acceptor.start()

    def _accept(self, listener: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed (refuse or close)
            with self._lock:
                state = self.state
            if state is State.REFUSE:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._pairs.append((client, upstream))
            for source, sink, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pump,
                    args=(source, sink),
                    kwargs={"upstream": up},
                    name="proxy-pump",
                    daemon=True,
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, *, upstream: bool) -> None:
        try:
            while True:
                data = source.recv(BUFFER_BYTES)
                if not data:
                    break
                if self.state is State.BLACKHOLE:
                    continue  # swallowed: the peer waits for an answer that never comes
                if upstream:  # counted first: the answer may be back before sendall returns
                    with self._lock:
                        self.forwarded_upstream += len(data)
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
