from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support import REPO


def test_the_wheel_ships_the_migrations_and_the_sql_and_finds_them(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
            "--no-build-isolation", "--no-index", "--wheel-dir", str(tmp_path / "dist"), str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("outbox_relay-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "relay/migrations/0001_outbox.sql" in names
    for sql_file in (REPO / "relay" / "sql").glob("*.sql"):
        assert f"relay/sql/{sql_file.name}" in names

    # Installed from the wheel (not the checkout), migrate finds its SQL in the package.
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    result = subprocess.run(
        [sys.executable, "-m", "relay", "migrate", "--print-sql"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        | {"PYTHONPATH": str(target)},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert 'CREATE TABLE "public"."outbox"' in result.stdout
    located = subprocess.run(
        [sys.executable, "-c", "import relay, sys; sys.stdout.write(relay.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": str(target)},
    )
    assert located.stdout.startswith(str(target))
