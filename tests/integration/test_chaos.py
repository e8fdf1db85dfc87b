"""The randomized fault run (bench/chaos.py), short and with fixed seeds, in both modes.

Each seed is a sequence of relay kills, PostgreSQL restarts (fast and immediate), broker
paths refused and blackholed, relay sessions terminated and operator retry/skip, under a
live writer; the independent consumer's verdict must be clean. The broker advertises
the proxy, so refuse and blackhole cut the relays' produce connections, not only their
bootstraps (the run fails if the sent payloads did not all go through the proxy). A seed
that ever fails joins the list.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO

pytestmark = pytest.mark.slow


def chaos(mode: str, seed: int, seconds: int = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "bench/chaos.py", "--mode", mode, "--seed", str(seed),
         "--seconds", str(seconds), "--rate", "200"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        check=False,
    )  # fmt: skip


# 2: kills, blackholes, a terminated session; 7: immediate and fast restarts, kills.
# WAL seed 2 found a mark that took a row whose commit turned visible just after it for
# settled (rows left pending, the slot confirmed past them; swept again after the
# terminated replication session, behind newer events of their keys).
# The WAL runs are cut short to keep the suite's time: 17 s still includes seed 2's
# terminated session (at 16.4 s), 12 s seed 7's restarts of both kinds.
@pytest.mark.parametrize(
    ("mode", "seed", "seconds"),
    [("poll", 2, 20), ("poll", 7, 20), ("wal", 2, 17), ("wal", 7, 12)],
)
def test_the_relay_survives_seeded_chaos(mode: str, seed: int, seconds: int) -> None:
    result = chaos(mode, seed=seed, seconds=seconds)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"OK: seed {seed}" in result.stdout
