-- The inbox of a consuming service: which events each consumer has applied, and the
-- records it gave up on (parked) until an operator retries or skips them.

CREATE TABLE {inbox} (
    consumer text NOT NULL,
    event_id uuid NOT NULL,
    topic text,
    partition integer,
    "offset" bigint,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Retention (`inbox purge --older-than`) deletes by age; `inbox status` counts the
-- last hour per consumer.
CREATE INDEX {processed_index} ON {inbox} (processed_at);
CREATE INDEX {consumer_processed_index} ON {inbox} (consumer, processed_at);

CREATE TABLE {parked} (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer text NOT NULL,
    event_id uuid,
    topic text NOT NULL,
    partition integer NOT NULL,
    "offset" bigint NOT NULL,
    key bytea,
    value bytea,
    headers jsonb NOT NULL DEFAULT '[]',
    error text NOT NULL,
    attempts integer NOT NULL,
    state text NOT NULL DEFAULT 'parked',
    parked_at timestamptz NOT NULL DEFAULT now(),
    released_at timestamptz,
    CONSTRAINT {parked_state_known} CHECK (state IN ('parked', 'retry', 'skipped', 'applied')),
    UNIQUE (consumer, topic, partition, "offset")
);

-- What still holds its key: parked records and those released for a retry.
CREATE INDEX {parked_open_index} ON {parked} (consumer, topic, key)
    WHERE state IN ('parked', 'retry');
