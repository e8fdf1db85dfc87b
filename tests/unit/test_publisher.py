from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import Settings
from relay.errors import ConfigError
from relay.events import OutboxEvent
from relay.publisher import producer_options, record_too_large

SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def test_production_defaults() -> None:
    options = producer_options(Settings())
    assert options["acks"] == "all"
    assert options["enable_idempotence"] is True
    assert options["compression_type"] is None
    assert options["linger_ms"] == 5
    assert options["max_batch_size"] == 1_048_576
    assert options["max_request_size"] == 1_048_576
    assert options["request_timeout_ms"] == 30_000
    assert options["security_protocol"] == "PLAINTEXT"
    assert "ssl_context" not in options
    assert "sasl_mechanism" not in options


def test_every_kafka_setting_reaches_the_producer() -> None:
    settings = Settings(
        bootstrap_servers="k1:9092,k2:9092",
        kafka_client_id="billing-relay",
        kafka_acks="1",
        kafka_enable_idempotence=False,
        kafka_compression="gzip",
        kafka_linger_ms=20,
        kafka_max_batch_bytes=65536,
        kafka_max_request_size=2_000_000,
        kafka_request_timeout_ms=5000,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="relay",
        kafka_sasl_password="s3cret",  # noqa: S106 - a test value
    )
    options = producer_options(settings)
    assert options == options | {
        "bootstrap_servers": "k1:9092,k2:9092",
        "client_id": "billing-relay",
        "acks": 1,
        "enable_idempotence": False,
        "compression_type": "gzip",
        "linger_ms": 20,
        "max_batch_size": 65536,
        "max_request_size": 2_000_000,
        "request_timeout_ms": 5000,
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "relay",
        "sasl_plain_password": "s3cret",
    }


def test_idempotence_needs_acks_all() -> None:
    with pytest.raises(ConfigError, match="idempotent producer needs 'all'"):
        producer_options(Settings(kafka_acks="1"))


@pytest.mark.skipif(not SYSTEM_CA.exists(), reason="no system CA bundle")
def test_tls_builds_a_verifying_context() -> None:
    options = producer_options(
        Settings(kafka_security_protocol="SASL_SSL", kafka_ssl_cafile=str(SYSTEM_CA))
    )
    context = options["ssl_context"]
    assert context.check_hostname
    assert options["sasl_mechanism"] == "PLAIN"


def test_unreadable_tls_files_are_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid Kafka TLS settings"):
        producer_options(
            Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=str(tmp_path / "missing.pem"))
        )


def event(size: int) -> OutboxEvent:
    return OutboxEvent(1, "e", "t", "key", b"x" * size, (("event_id", b"e"),))


def test_records_over_the_request_size_are_permanent_failures() -> None:
    assert record_too_large(event(900), 1000) is None
    failure = record_too_large(event(5000), 1000)
    assert failure is not None
    assert not failure.retriable
    assert "larger than kafka_max_request_size (1000)" in failure.error
