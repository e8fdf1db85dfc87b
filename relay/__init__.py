"""outbox-relay: a transactional-outbox relay from PostgreSQL to Kafka."""
