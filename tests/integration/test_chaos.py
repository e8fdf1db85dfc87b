"""The randomized fault run (bench/chaos.py), short and with fixed seeds, in both modes.

Each seed is a sequence of relay kills, PostgreSQL restarts (fast and immediate), broker
paths refused and blackholed, relay sessions terminated and operator retry/skip, under a
live writer; the independent consumer's verdict must be clean. A seed that ever fails
joins the list.
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
# WAL mode is not in this list yet: `bench/chaos.py --mode wal --seed 2` still finds
# published rows left pending after a terminated replication session (README, Known
# limits); it joins when that seed passes.
@pytest.mark.parametrize(("mode", "seed"), [("poll", 2), ("poll", 7)])
def test_the_relay_survives_seeded_chaos(mode: str, seed: int) -> None:
    result = chaos(mode, seed=seed)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"OK: seed {seed}" in result.stdout
