"""Prometheus metrics of one relay process.

Every metric is declared here, once, so the loop, the sources, the publisher and the
HTTP endpoint agree on names. Names follow Prometheus conventions: ``_total`` counters,
base units in ``_seconds`` and ``_bytes``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Buckets of commit-to-ack latency: 1 ms up to a minute.
LATENCY_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)


class Metrics:
    """The metrics of one relay, in their own registry (tests run several relays)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_published = Counter(
            "outbox_relay_events_published", "Events Kafka acknowledged.", ["topic"], registry=r
        )
        self.publish_errors = Counter(
            "outbox_relay_publish_errors",
            "Events Kafka did not acknowledge, by error class.",
            ["topic", "error"],
            registry=r,
        )
        self.events_parked = Counter(
            "outbox_relay_events_parked",
            "Events parked after repeated failures.",
            ["topic"],
            registry=r,
        )
        self.batch_size = Histogram(
            "outbox_relay_batch_size_events",
            "Events per published batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.commit_to_ack = Histogram(
            "outbox_relay_commit_to_ack_seconds",
            "From the event's creation in the outbox to Kafka's acknowledgement.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.oldest_unsent_age = Gauge(
            "outbox_relay_oldest_unsent_age_seconds",
            "Age of the oldest event not yet sent (0 when none is pending).",
            registry=r,
        )
        self.pending_events = Gauge(
            "outbox_relay_pending_events", "Outbox rows waiting to be published.", registry=r
        )
        self.parked_events = Gauge(
            "outbox_relay_parked_events", "Outbox rows parked right now.", registry=r
        )
        self.wal_retained_bytes = Gauge(
            "outbox_relay_wal_retained_bytes",
            "WAL the replication slot keeps on the server (wal mode).",
            registry=r,
        )
        self.wal_lag_seconds = Gauge(
            "outbox_relay_wal_lag_seconds",
            "Time since the last event the slot confirmed was committed (wal mode).",
            registry=r,
        )
        self.is_leader = Gauge(
            "outbox_relay_leader", "1 while this relay holds the outbox's leadership.", registry=r
        )
        self.last_progress = Gauge(
            "outbox_relay_last_progress_timestamp_seconds",
            "Unix time of the last acknowledged batch or idle check.",
            registry=r,
        )
