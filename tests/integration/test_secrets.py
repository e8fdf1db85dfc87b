"""No password, nor any part of one, in `config show`, a CLI error line, or the logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from relay import redact
from tests.support import REPO, run_cli

#: (database URL or conninfo, its password). Port 1: nothing listens, connecting fails.
SHAPES = [
    ("postgresql://app:Plain5ecret@127.0.0.1:1/db", "Plain5ecret"),
    ("postgresql+psycopg://app:Dr1ver5ecret@127.0.0.1:1/db", "Dr1ver5ecret"),
    ("postgresql://app:s3cr%ZZqx@127.0.0.1:1/db", "s3cr%ZZqx"),
    ("postgresql://app:kw5@ss5wxq@127.0.0.1:1/db", "kw5@ss5wxq"),
    ("postgresql://app:sl/ash5ecret@127.0.0.1:1/db", "sl/ash5ecret"),
    ("postgresql://app:c0l:on5ecret@127.0.0.1:1/db", "c0l:on5ecret"),
    ("postgresql://app:g%C3%ABh%C3%A9im5ecret@127.0.0.1:1/db", "gëhéim5ecret"),
    ("postgresql://app:gëhéim6ecret@127.0.0.1:1/db", "gëhéim6ecret"),
    ("postgresql://app@127.0.0.1:1/db?password=Qzry5ecret", "Qzry5ecret"),
    ("host=127.0.0.1 port=1 user=app password = Spaced5ecret dbname=db", "Spaced5ecret"),
    ("host=127.0.0.1 port=1 user=app password='a b Quoted5ecret' dbname=db", "a b Quoted5ecret"),
    (r"host=127.0.0.1 port=1 password='it\'s Esc5ecret' dbname=db", "it's Esc5ecret"),
    ("host=127.0.0.1 port=1 password='Untrm5ecret dbname=db", "Untrm5ecret"),
    ("host=127.0.0.1 port=1 password=Bad5ecret bogus", "Bad5ecret"),
]


def assert_no_part(text: str, password: str) -> None:
    """Neither the password nor any 4 characters in a row of it (nor of its spellings)."""
    for secret in [*redact.passwords(f"postgresql://u:{password}@h"), password]:
        for start in range(max(len(secret) - 3, 1)):
            assert secret[start : start + 4] not in text, (secret[start : start + 4], text)


@pytest.mark.parametrize(("url", "password"), SHAPES)
def test_config_show_and_the_error_line_never_show_the_password(url: str, password: str) -> None:
    shown = run_cli("config", "show", env={"RELAY_DATABASE_URL": url})
    assert_no_part(shown.stdout + shown.stderr, password)
    if shown.returncode == 0:
        assert "***" in shown.stdout
    else:  # refused: one line that says why
        assert "malformed database URL" in shown.stderr, shown.stderr
        assert len(shown.stderr.strip().splitlines()) == 1
    failed = run_cli("migrate", "--database-url", url)
    assert failed.returncode != 0
    assert_no_part(failed.stdout + failed.stderr, password)
    assert failed.stderr.startswith("outbox-relay: error: "), failed.stderr


def test_the_relays_logs_at_debug_never_show_the_password() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    command = [
        sys.executable, "-m", "relay", "run", "--log-level", "debug",
        "--log-format", "json", "--bootstrap-servers", "127.0.0.1:1",
    ]  # fmt: skip
    processes = [
        (
            subprocess.Popen(
                command,
                env=env | {"RELAY_DATABASE_URL": url},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=REPO,
            ),
            password,
        )
        for url, password in SHAPES
    ]
    # Long enough for each to try leadership (and Kafka) at least once.
    time.sleep(8)
    outputs = []
    for process, password in processes:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        outputs.append(output)
        assert_no_part(output, password)
    # Those that started logged their failure to connect (the others were refused).
    assert any("cannot connect to PostgreSQL" in output for output in outputs), outputs
