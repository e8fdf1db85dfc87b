"""Settings that can never work are refused at start, in one line."""

from __future__ import annotations

import re

import pytest

from relay import config
from relay.config import Settings, load_settings
from relay.errors import ConfigError


@pytest.mark.parametrize("template", ["orders}", "{", "outbox.{aggregate_type"])
def test_a_topic_template_with_unbalanced_braces_is_refused_at_start(template: str) -> None:
    """Accepted before, it raised ValueError (a traceback) at the first relayed event."""
    with pytest.raises(ConfigError) as caught:
        load_settings({"topic_template": template}, {})
    assert "invalid topic_template in --topic-template" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == 2


def test_on_sent_none_with_poison_park_is_refused_at_start() -> None:
    """Without per-row state, events held behind a parked key could never be released."""
    with pytest.raises(ConfigError) as caught:
        load_settings({"mode": "wal", "on_sent": "none"}, {})
    assert "'none' needs --poison skip" in str(caught.value)
    assert caught.value.exit_code == 2
    settings = load_settings({"mode": "wal", "on_sent": "none", "poison": "skip"}, {})
    assert settings.on_sent.value == "none"


@pytest.mark.parametrize(
    "environ",
    [
        {"RELAY_PORT": "tcp://10.0.0.1:80"},
        {"RELAY_HTTP_PORT": "tcp://10.0.0.1:8080"},
        {
            "RELAY_SERVICE_HOST": "10.0.0.1",
            "RELAY_SERVICE_PORT": "80",
            "RELAY_SERVICE_PORT_HTTP": "80",
            "RELAY_PORT_80_TCP": "tcp://10.0.0.1:80",
            "RELAY_PORT_80_TCP_PROTO": "tcp",
            "RELAY_PORT_80_TCP_PORT": "80",
            "RELAY_PORT_80_TCP_ADDR": "10.0.0.1",
        },
        {
            "RELAY_HTTP_SERVICE_HOST": "10.0.0.2",
            "RELAY_HTTP_SERVICE_PORT": "8080",
            "RELAY_HTTP_PORT_8080_TCP": "tcp://10.0.0.2:8080",
            "RELAY_HTTP_PORT_8080_TCP_ADDR": "10.0.0.2",
        },
    ],
)
def test_kubernetes_service_links_are_not_settings(environ: dict[str, str]) -> None:
    """A Service named relay or relay-http injects these; they used to stop the relay."""
    settings = load_settings({}, environ)
    assert settings == Settings()
    assert config.service_links(environ) == sorted(environ)


def test_a_real_http_port_still_counts_beside_service_links() -> None:
    environ = {"RELAY_HTTP_PORT": "9000", "RELAY_PORT": "tcp://10.0.0.1:80"}
    assert load_settings({}, environ).http_port == 9000
    assert config.service_links(environ) == ["RELAY_PORT"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"lock_id": str(2**63)}, "must be at most 9223372036854775807"),
        ({"http_port": "70000"}, "must be at most 65535"),
        ({"poll_interval": "0"}, "must be at least 0.01s"),
        ({"bootstrap_servers": " , "}, "got nothing"),
        ({"bootstrap_servers": "host:abc"}, "expected host:port, got 'host:abc'"),
        ({"slot_name": "Relay"}, "lower-case letters"),
        ({"slot_name": "s" * 64}, "lower-case letters"),
        ({"table": "t" * 49}, "at most 48 characters"),
        ({"schema": "s" * 40, "table": "t" * 40}, "longer than 63 bytes"),
        ({"shutdown_timeout": "9" * 400}, "longer than 100 years"),
    ],
)
def test_settings_that_can_never_work_are_refused(flags: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        load_settings(dict(flags), {})
    assert caught.value.exit_code == 2


def test_bootstrap_lists_are_normalised() -> None:
    settings = load_settings({"bootstrap_servers": "a:9092, b:9093,[::1]:9094,c"}, {})
    assert settings.bootstrap_servers == "a:9092,b:9093,[::1]:9094,c"
