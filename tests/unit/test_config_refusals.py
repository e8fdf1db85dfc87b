"""Settings that can never work are refused at start, in one line."""

from __future__ import annotations

import pytest

from relay.config import load_settings
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
