-- The outbox table, its indexes, the producer functions and the WAL-mode publication.
-- Placeholders in braces are filled with quoted identifiers (psycopg.sql), never text.

CREATE TABLE {outbox} (
    -- Order within the outbox: poll mode publishes in id order.
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Carried on every Kafka record so consumers can drop the duplicates of a crash window.
    event_id uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    topic text NOT NULL,
    -- The partition key, e.g. the aggregate id. Same key, same partition, outbox order.
    key text,
    -- JSON events use payload; Avro, Protobuf or any other bytes use payload_bytes.
    payload jsonb,
    payload_bytes bytea,
    headers jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    event_type text,
    aggregate_type text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    state text NOT NULL DEFAULT 'pending',
    sent_at timestamptz,
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    parked_at timestamptz,
    skip_reason text,
    -- Kafka's own rules for topic names, checked here so a bad event fails the service's
    -- transaction instead of stalling the relay later. The length is checked apart: a
    -- bounded repetition ({{1,249}}) in the pattern makes every insert ~15 times slower.
    CONSTRAINT {topic_valid} CHECK (
        topic ~ '^[a-zA-Z0-9._-]+$' AND length(topic) <= 249 AND topic NOT IN ('.', '..')
    ),
    CONSTRAINT {one_payload} CHECK (payload IS NULL OR payload_bytes IS NULL),
    CONSTRAINT {payload_size} CHECK (
        coalesce(octet_length(payload::text), octet_length(payload_bytes), 0) <= {max_payload_bytes}
    ),
    CONSTRAINT {headers_object} CHECK (jsonb_typeof(headers) = 'object'),
    CONSTRAINT {state_known} CHECK (state IN ('pending', 'sent', 'parked', 'skipped'))
);

-- The relay's scan: a range scan over pending rows only, however many sent rows there are.
CREATE INDEX {pending_index} ON {outbox} (id) WHERE state = 'pending';
-- Parked events block later events of their key: this finds them without a scan.
CREATE INDEX {parked_index} ON {outbox} (key, id) WHERE state = 'parked';

-- Wake the poll relay as soon as a transaction with events commits (one notification per
-- statement, delivered at commit; a relay that misses it still polls).
CREATE FUNCTION {notify_function}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify({channel}, '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER {notify_trigger} AFTER INSERT ON {outbox}
    FOR EACH STATEMENT EXECUTE FUNCTION {notify_function}();

-- One statement to write an event from any language, inside the caller's transaction.
CREATE FUNCTION {publish_function}(
    topic text,
    key text,
    payload jsonb,
    headers jsonb DEFAULT '{{}}'::jsonb,
    event_type text DEFAULT NULL,
    aggregate_type text DEFAULT NULL
) RETURNS uuid LANGUAGE sql AS $$
    INSERT INTO {outbox} (topic, key, payload, headers, event_type, aggregate_type)
    VALUES ($1, $2, $3, coalesce($4, '{{}}'::jsonb), $5, $6)
    RETURNING event_id;
$$;

CREATE FUNCTION {publish_bytes_function}(
    topic text,
    key text,
    payload bytea,
    headers jsonb DEFAULT '{{}}'::jsonb,
    event_type text DEFAULT NULL,
    aggregate_type text DEFAULT NULL
) RETURNS uuid LANGUAGE sql AS $$
    INSERT INTO {outbox} (topic, key, payload_bytes, headers, event_type, aggregate_type)
    VALUES ($1, $2, $3, coalesce($4, '{{}}'::jsonb), $5, $6)
    RETURNING event_id;
$$;

-- WAL mode streams inserts only: updates (marking sent) and deletes are never published.
CREATE PUBLICATION {publication} FOR TABLE {outbox} WITH (publish = 'insert');
