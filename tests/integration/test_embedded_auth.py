"""The throwaway cluster lets in only its own user: a password over TCP, or its socket."""

from __future__ import annotations

import stat

import psycopg
import pytest

from relay._embedded import EmbeddedPostgres


def test_tcp_without_the_password_is_refused(postgres: EmbeddedPostgres) -> None:
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{postgres.port}/postgres").close()
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(f"postgresql://postgres:guess@127.0.0.1:{postgres.port}/postgres").close()
    with psycopg.connect(postgres.tcp_url_for("postgres")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


def test_the_socket_is_in_a_directory_only_its_owner_may_enter(
    postgres: EmbeddedPostgres,
) -> None:
    mode = postgres.base_dir.stat().st_mode
    assert stat.S_IMODE(mode) == 0o700
    with psycopg.connect(postgres.url) as conn:
        row = conn.execute("SELECT inet_server_addr() IS NULL").fetchone()
    assert row == (True,)  # a Unix-socket connection
