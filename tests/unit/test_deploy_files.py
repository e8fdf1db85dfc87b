"""Static checks of the Dockerfile and docker-compose.yml (there is no Docker engine here).

They parse, every command and ``RELAY_`` variable they use exists in the CLI and the
settings, and ports, health checks and dependencies line up.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from typing import Any

import pytest
import yaml

from relay import config
from relay.cli import main
from tests.support import REPO

RELAY_IMAGE = "outbox-relay:local"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "Dockerfile ends inside a continuation line"
    pairs = []
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for name, arguments in final_stage():
        if name == "ENV":
            for item in shlex.split(arguments):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return document


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose()["services"]
    return result


def relay_services() -> dict[str, dict[str, Any]]:
    """Services that run the relay image with its own entrypoint (``outbox-relay``)."""
    return {
        name: service
        for name, service in services().items()
        if service.get("image") == RELAY_IMAGE and "entrypoint" not in service
    }


def relay_port() -> int:
    return int(dockerfile_env()["RELAY_HTTP_PORT"])


# --- Dockerfile ----------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_a_slim_python_base() -> None:
    froms = [arguments for name, arguments in dockerfile_instructions() if name == "FROM"]
    assert len(froms) >= 2
    assert all(re.search(r"\sAS\s+\w+$", line, re.IGNORECASE) for line in froms)
    assert froms[-1].split()[0].startswith("python:3.12-slim")
    copies_from_build = [
        arguments for name, arguments in final_stage() if name == "COPY" and "--from=" in arguments
    ]
    assert copies_from_build, "the runtime stage should copy the built venv, not build it"


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [arguments for name, arguments in final_stage() if name == "USER"]
    assert users, "no USER in the runtime stage: the relay would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_dockerfile_entrypoint_is_exec_form_so_sigterm_reaches_the_relay() -> None:
    stage = dict(final_stage())
    assert json.loads(stage["ENTRYPOINT"]) == ["outbox-relay"]
    command = json.loads(stage["CMD"])
    assert command[0] in main.commands
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["outbox-relay"] == "relay.cli:main"


def test_dockerfile_installs_runtime_dependencies_only() -> None:
    runs = " ".join(arguments for name, arguments in dockerfile_instructions() if name == "RUN")
    assert "pip install ." in runs
    assert "[dev]" not in runs
    assert "[demo]" not in runs
    assert "-e " not in runs


def test_dockerfile_healthcheck_probes_healthz_on_the_exposed_port() -> None:
    stage = final_stage()
    healthcheck = next(arguments for name, arguments in stage if name == "HEALTHCHECK")
    assert "/healthz" in healthcheck
    assert "RELAY_HTTP_PORT" in healthcheck
    assert f"'{relay_port()}'" in healthcheck  # the fallback matches the default port
    assert "curl" not in healthcheck  # slim images have no curl
    exposed = [int(arguments) for name, arguments in stage if name == "EXPOSE"]
    assert exposed == [relay_port()]


def test_dockerfile_is_configured_by_real_relay_settings() -> None:
    env = {key: value for key, value in dockerfile_env().items() if key.startswith("RELAY_")}
    assert env
    # load_settings rejects unknown RELAY_ names and invalid values with a ConfigError.
    settings = config.load_settings({}, env)
    assert settings.http_port == relay_port()
    # Probes and scrapers reach a container from outside: loopback would refuse them.
    assert settings.http_host == "0.0.0.0"  # noqa: S104


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # nothing but what the image needs goes to the build context
    for name, arguments in dockerfile_instructions():
        if name != "COPY" or "--from=" in arguments:
            continue
        *sources, _ = arguments.split()
        for source in sources:
            assert (REPO / source).exists(), source
            assert f"!{source.rstrip('/')}" in {line.rstrip("/") for line in ignore}, source


# --- docker-compose.yml --------------------------------------------------------------


def test_compose_has_the_whole_stack() -> None:
    assert set(services()) >= {
        "postgres",
        "kafka",
        "migrate",
        "relay-poll",
        "relay-wal",
        "order-service",
        "print-consumer",
    }


def test_compose_postgres_has_logical_decoding_and_a_readiness_check() -> None:
    postgres = services()["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert "wal_level=logical" in postgres["command"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_compose_kafka_is_single_node_kraft_on_the_official_image() -> None:
    kafka = services()["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = {key: str(value) for key, value in kafka["environment"].items()}
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    node = env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{node}@kafka:")
    controller_port = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].rsplit(":", 1)[1]
    assert f"CONTROLLER://:{controller_port}" in env["KAFKA_LISTENERS"]
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "true"
    assert "healthcheck" in kafka
    # Every relay-image service reaches Kafka through the advertised listener.
    advertised = env["KAFKA_ADVERTISED_LISTENERS"].removeprefix("PLAINTEXT://")
    for name, service in relay_services().items():
        assert service["environment"]["RELAY_BOOTSTRAP_SERVERS"] == advertised, name


@pytest.mark.parametrize("name", ["migrate", "relay-poll", "relay-wal"])
def test_compose_relay_commands_exist_in_the_cli(name: str) -> None:
    service = relay_services()[name]
    command = service["command"]
    assert command[0] in main.commands, f"{name} runs unknown command {command[0]!r}"


def test_compose_relay_variables_are_real_settings_with_valid_values() -> None:
    for name, service in services().items():
        env = {key: str(value) for key, value in (service.get("environment") or {}).items()}
        relay_env = {key: value for key, value in env.items() if key.startswith("RELAY_")}
        # Raises ConfigError on an unknown name (RELAY_HTTP_PROT) or a bad value.
        config.load_settings({}, relay_env)
        if name in relay_services():
            assert relay_env["RELAY_DATABASE_URL"]


def test_compose_relay_sidecars_are_profiles_with_their_mode() -> None:
    relays = services()
    assert relays["relay-poll"]["profiles"] == ["poll"]
    assert relays["relay-poll"]["environment"]["RELAY_MODE"] == "poll"
    assert relays["relay-wal"]["profiles"] == ["wal"]
    assert relays["relay-wal"]["environment"]["RELAY_MODE"] == "wal"


def test_compose_relay_ports_match_the_health_endpoint() -> None:
    for name in ("relay-poll", "relay-wal"):
        service = services()[name]
        port = int(service["environment"]["RELAY_HTTP_PORT"])
        assert port == relay_port(), name
        assert service["environment"]["RELAY_HTTP_HOST"] == "0.0.0.0", name  # noqa: S104
        container_ports = [int(str(mapping).rsplit(":", 1)[1]) for mapping in service["ports"]]
        assert container_ports == [port], name
        # Docker's SIGKILL must come after the relay's own drain deadline.
        grace_s = config.parse_duration(service["stop_grace_period"])
        assert grace_s > config.Settings().shutdown_timeout, name


def has_healthcheck(service: dict[str, Any]) -> bool:
    healthcheck = service.get("healthcheck")
    if healthcheck is not None:
        return not healthcheck.get("disable", False)
    # The relay image brings the Dockerfile's HEALTHCHECK.
    return service.get("image") == RELAY_IMAGE


def test_compose_dependencies_line_up() -> None:
    all_services = services()
    for name, service in all_services.items():
        for target, condition in (service.get("depends_on") or {}).items():
            assert target in all_services, f"{name} depends on unknown {target}"
            wanted = condition["condition"]
            if wanted == "service_healthy":
                assert has_healthcheck(all_services[target]), f"{name} waits on {target}"
            elif wanted == "service_completed_successfully":
                assert all_services[target].get("restart", "no") == "no", target
            else:
                assert wanted == "service_started", wanted
            if "profiles" not in service:
                assert "profiles" not in all_services[target], f"{name} needs {target}'s profile"


def test_compose_one_shot_services_do_not_report_unhealthy() -> None:
    for name in ("migrate", "order-service", "print-consumer"):
        assert services()[name]["healthcheck"] == {"disable": True}, name


def test_compose_example_scripts_exist() -> None:
    for name, service in services().items():
        entrypoint = service.get("entrypoint")
        if not entrypoint:
            continue
        volumes = {
            volume.split(":")[1]: volume.split(":")[0] for volume in service.get("volumes", [])
        }
        script = entrypoint[1]
        mount = next(target for target in volumes if script.startswith(target + "/"))
        local = REPO / volumes[mount] / script.removeprefix(mount + "/")
        assert local.is_file(), f"{name} runs missing {local}"
