from __future__ import annotations

from tests.support import run_cli


def test_demo_with_inbox_applies_every_event_once() -> None:
    done = run_cli("demo", "--events", "300", "--rate", "0", "--keys", "10", "--with-inbox",
                   timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "inbox: 300 of 300 orders applied, each once" in done.stdout
    assert "0 out of key order" in done.stdout
