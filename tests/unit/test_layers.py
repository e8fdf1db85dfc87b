"""The layering the README promises, checked on the import graph of fresh interpreters.

CLI -> wiring (``relay.run``) -> loop -> protocols, with the sources and the publisher
beside the loop. The loop decides and never sees a database or broker library; no daemon
module loads click or a CLI module, and the throwaway servers of the demo and the tests
stay out of the daemon.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import REPO

DAEMON_MODULES = (
    "relay.connection",
    "relay.health",
    "relay.http",
    "relay.inbox.consumer",
    "relay.kafka",
    "relay.leadership",
    "relay.loop",
    "relay.metrics",
    "relay.poll",
    "relay.publisher",
    "relay.replication",
    "relay.run",
    "relay.source",
    "relay.wal",
)
CLI_MODULES = (
    "click",
    "relay.admin_cli",
    "relay.cli",
    "relay.demo",
    "relay.doctor",
    "relay.options",
    "relay.slot_cli",
    "relay._embedded",
)


def loaded_after_import(module: str) -> set[str]:
    """The modules a fresh interpreter holds after ``import module``."""
    script = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return set(json.loads(result.stdout))


def top_level(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules} | modules


def test_the_loop_imports_neither_a_database_nor_a_broker_library_nor_click() -> None:
    loaded = top_level(loaded_after_import("relay.loop"))
    assert not loaded & {"aiokafka", "psycopg", "click", "sqlalchemy"}


@pytest.mark.parametrize("module", DAEMON_MODULES)
def test_daemon_modules_load_no_cli_module(module: str) -> None:
    loaded = top_level(loaded_after_import(module))
    assert not loaded & set(CLI_MODULES), sorted(loaded & set(CLI_MODULES))


def test_the_contract_catches_a_module_that_imports_click() -> None:
    # The check above must be able to fail: a module that imports click is caught.
    loaded = top_level(loaded_after_import("relay.options"))
    assert "click" in loaded
