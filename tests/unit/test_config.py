from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from relay import config
from relay.config import Mode, OnSent, Settings, load_settings, mask_url, parse_duration, shown
from relay.errors import ConfigError


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return path


def test_defaults_when_nothing_is_given() -> None:
    settings = load_settings({}, {})
    assert settings == Settings()
    assert (settings.schema, settings.table, settings.mode) == ("public", "outbox", Mode.POLL)


def test_precedence_is_flag_over_environment_over_file_over_default(tmp_path: Path) -> None:
    path = _file(tmp_path, 'batch_size = 10\nmode = "wal"\nschema = "from_file"\n')
    environ = {"RELAY_BATCH_SIZE": "20", "RELAY_MODE": "poll"}
    flags: dict[str, object | None] = {"batch_size": "30", "mode": None}

    settings = load_settings(flags, environ, path)

    assert settings.batch_size == 30  # flag beats environment and file
    assert settings.mode is Mode.POLL  # environment beats file (the flag was not given)
    assert settings.schema == "from_file"  # file beats default
    assert settings.table == "outbox"  # default


@pytest.mark.parametrize(
    ("flags", "environ", "expected"),
    [
        ({}, {}, 2000),
        ({}, {"RELAY_BATCH_SIZE": "20"}, 20),
        ({"batch_size": "30"}, {"RELAY_BATCH_SIZE": "20"}, 30),
        ({"batch_size": None}, {"RELAY_BATCH_SIZE": "20"}, 20),
    ],
)
def test_each_layer_alone(
    tmp_path: Path, flags: dict[str, object | None], environ: dict[str, str], expected: int
) -> None:
    assert load_settings(flags, environ).batch_size == expected
    with_file = load_settings(flags, environ, _file(tmp_path, "batch_size = 10\n"))
    assert with_file.batch_size == (10 if expected == 2000 else expected)


def test_kafka_options_come_from_a_kafka_table_or_prefixed_keys(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        'kafka_acks = "1"\n[kafka]\nsecurity-protocol = "sasl_ssl"\nlinger_ms = 20\n'
        "enable_idempotence = false\n",
    )
    settings = load_settings({}, {}, path)
    assert settings.kafka_acks == "1"
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_linger_ms == 20
    assert settings.kafka_enable_idempotence is False


def test_values_are_parsed_into_their_types() -> None:
    settings = load_settings(
        {"poll_interval": "500ms", "on_sent": "DELETE", "kafka_enable_idempotence": "off"},
        {"RELAY_SHUTDOWN_TIMEOUT": "2m", "RELAY_HTTP_PORT": "9000"},
    )
    assert settings.poll_interval == 0.5
    assert settings.on_sent is OnSent.DELETE
    assert settings.kafka_enable_idempotence is False
    assert settings.shutdown_timeout == 120.0
    assert settings.http_port == 9000


def test_relay_config_is_not_a_setting() -> None:
    assert load_settings({}, {"RELAY_CONFIG": "/etc/relay.toml", "OTHER": "x"}) == Settings()


@pytest.mark.parametrize(
    ("flags", "environ", "message"),
    [
        ({}, {"RELAY_BATCH_SIZE": "abc"}, "invalid batch_size in $RELAY_BATCH_SIZE: expected an"),
        (
            {},
            {"RELAY_BATCH_SIZE": "0"},
            "invalid batch_size in $RELAY_BATCH_SIZE: must be at least 1",
        ),
        ({"mode": "foo"}, {}, "invalid mode in --mode: expected one of poll, wal, got 'foo'"),
        ({"poll_interval": "soon"}, {}, "invalid poll_interval in --poll-interval: expected sec"),
        ({"schema": "my schema"}, {}, "invalid schema in --schema: expected a plain SQL name"),
        ({"kafka_enable_idempotence": "maybe"}, {}, "expected true or false, got 'maybe'"),
        ({"topic_template": "x.{user}"}, {}, "unknown field {user}"),
        ({}, {"RELAY_MODEE": "wal"}, "unknown setting 'RELAY_MODEE' in the environment"),
        ({"on_sent": "none"}, {}, "'none' works only with --mode wal"),
    ],
)
def test_bad_values_raise_config_error_naming_where_they_came_from(
    flags: dict[str, object | None], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(flags, environ)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == 2


def test_an_unknown_key_in_the_file_suggests_the_right_one(tmp_path: Path) -> None:
    path = _file(tmp_path, "batch_sise = 5\n")
    with pytest.raises(
        ConfigError,
        match=r"unknown setting 'batch_sise' in .*relay.toml \(did you mean batch_size\?\)",
    ):
        load_settings({}, {}, path)


def test_an_invalid_value_in_the_file_names_the_file(tmp_path: Path) -> None:
    path = _file(tmp_path, 'batch_size = "many"\n')
    with pytest.raises(
        ConfigError, match=r"invalid batch_size in .*relay.toml: expected an integer"
    ):
        load_settings({}, {}, path)


def test_a_file_that_is_not_toml_or_missing_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_settings({}, {}, _file(tmp_path, "mode = \n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({}, {}, tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", 'missing "=" after "not"'),
        ("mysql://app@db/app", "expected postgresql://..., got mysql://..."),
        ("postgresql://app@db/app?nonsense=1", 'invalid URI query parameter: "nonsense"'),
    ],
)
def test_a_malformed_database_url_is_a_config_error(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match="malformed database URL") as caught:
        load_settings({"database_url": url}, {})
    assert message in str(caught.value)


def test_a_malformed_database_url_error_does_not_show_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"database_url": "postgresql://app:s3cret@[db/app"}, {})
    assert "s3cret" not in str(caught.value)
    assert "app:***@" in str(caught.value)


def test_a_sqlalchemy_url_is_accepted_and_given_to_libpq_without_the_driver() -> None:
    settings = load_settings({"database_url": "postgresql+psycopg://app@db/app"}, {})
    assert settings.conninfo == "postgresql://app@db/app"


def test_show_masks_every_secret_and_nothing_else() -> None:
    settings = dataclasses.replace(
        Settings(),
        database_url="postgresql://app:s3cret@db:5432/app?sslmode=require",
        kafka_sasl_username="relay",
        kafka_sasl_password="sasl-s3cret",  # noqa: S106 (a fake secret to hide)
        kafka_ssl_password="key-s3cret",  # noqa: S106
    )
    values = shown(settings)
    assert "s3cret" not in str(values)
    assert values["database_url"] == "postgresql://app:***@db:5432/app?sslmode=require"
    assert values["kafka_sasl_password"] == "***"  # noqa: S105
    assert values["kafka_ssl_password"] == "***"  # noqa: S105
    assert values["kafka_sasl_username"] == "relay"
    assert values["mode"] == "poll"
    assert list(values) == [option.name for option in config.OPTIONS]


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://app:pw@db/app", "postgresql://app:***@db/app"),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
        ("host=db user=app password=pw dbname=app", "host=db user=app password=*** dbname=app"),
        ("postgresql://app@db/app?password=pw", "postgresql://app@db/app?password=***"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1.5", 1.5), ("500ms", 0.5), ("30s", 30.0), ("2m", 120.0), ("1h", 3600.0), ("7d", 604800.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_every_option_has_a_flag_an_environment_variable_and_a_default() -> None:
    defaults = Settings()
    for option in config.OPTIONS:
        assert option.flag == "--" + option.name.replace("_", "-")
        assert option.env == "RELAY_" + option.name.upper()
        assert hasattr(defaults, option.name)
