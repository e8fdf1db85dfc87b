-- Queries of the operator commands (status, inspect, show, replay, retry, skip, purge,
-- doctor). Every query here must be safe beside a running relay: short transactions,
-- keyset ranges on the primary key or the partial indexes, never a scan of the whole
-- outbox and never a lock held for longer than one small batch.

-- name: id_range
SELECT coalesce(min(id), 0) AS min_id, coalesce(max(id), 0) AS max_id, now() AS now
FROM {outbox};

-- name: first_row_from
-- One primary-key probe of the binary search that turns a time into an id bound.
SELECT id, created_at FROM {outbox} WHERE id >= %(id)s ORDER BY id LIMIT 1;

-- name: selection
-- The WHERE clause shared by inspect, replay, retry and skip. Absent filters are NULL and
-- fold away when PostgreSQL plans with the values (psycopg sends them unprepared), so a
-- state filter reaches the partial index on pending or parked rows.
id > %(after_id)s AND id < %(before_id)s
AND (%(state)s::text IS NULL OR state = %(state)s::text)
AND (%(topics)s::text[] IS NULL OR topic = ANY(%(topics)s::text[]))
AND (%(keys)s::text[] IS NULL OR key = ANY(%(keys)s::text[]))
AND (%(event_ids)s::uuid[] IS NULL OR event_id = ANY(%(event_ids)s::uuid[]))
AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s::timestamptz)
AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s::timestamptz)

-- name: list_events
SELECT id, event_id, topic, key, state, created_at, sent_at, attempts, last_error,
       parked_at, skip_reason, event_type, aggregate_type, headers, payload, payload_bytes
FROM {outbox}
WHERE {selection}
ORDER BY id {direction}
LIMIT %(limit)s;

-- name: event_by_event_id
SELECT id, event_id, topic, key, state, created_at, sent_at, attempts, last_error,
       parked_at, skip_reason, event_type, aggregate_type, headers, payload, payload_bytes
FROM {outbox}
WHERE event_id = %(event_id)s;

-- name: event_by_id
SELECT id, event_id, topic, key, state, created_at, sent_at, attempts, last_error,
       parked_at, skip_reason, event_type, aggregate_type, headers, payload, payload_bytes
FROM {outbox}
WHERE id = %(id)s;

-- name: count_selection
SELECT topic, count(*) AS events, min(id) AS first_id, max(id) AS last_id
FROM {outbox}
WHERE {selection}
GROUP BY topic
ORDER BY topic;

-- name: pending_by_topic
-- Reads the partial index on pending rows only: cheap however many sent rows there are.
SELECT topic, count(*) AS events, min(created_at) AS oldest
FROM {outbox}
WHERE state = 'pending'
GROUP BY topic;

-- name: parked_by_topic
SELECT topic, count(*) AS events, min(parked_at) AS oldest
FROM {outbox}
WHERE state = 'parked'
GROUP BY topic;

-- name: sent_in_chunk
-- One slice of the backward walk that counts recently sent events (sent_at has no index:
-- the walk stops at the first slice with rows but nothing recent and nothing pending).
SELECT topic,
       count(*) FILTER (WHERE sent_at >= %(minute_ago)s) AS sent_last_minute,
       count(*) FILTER (WHERE sent_at >= %(hour_ago)s) AS sent_last_hour,
       count(*) FILTER (WHERE state = 'pending') AS pending,
       max(created_at) AS newest_created
FROM {outbox}
WHERE id > %(low)s AND id <= %(high)s
GROUP BY topic;

-- name: last_id_at_or_below
-- The walk's jump over an id gap (a sequence set forward, rolled-back inserts, purged
-- rows): one backward probe of the primary key.
SELECT max(id) AS id FROM {outbox} WHERE id <= %(id)s;

-- name: retry_batch
WITH chosen AS (
    SELECT id FROM {outbox}
    WHERE {selection}
    ORDER BY id
    LIMIT %(batch_size)s
    FOR UPDATE
), released AS (
    UPDATE {outbox} AS o
    SET state = 'pending', attempts = 0, last_error = NULL, parked_at = NULL
    FROM chosen
    WHERE o.id = chosen.id AND o.state = 'parked'
    RETURNING o.id
)
SELECT (SELECT count(*) FROM released) AS changed, (SELECT max(id) FROM chosen) AS last_id;

-- name: skip_batch
-- from_state: 'parked', or 'pending' for a poison row named by its event id (poll mode).
WITH chosen AS (
    SELECT id FROM {outbox}
    WHERE {selection}
    ORDER BY id
    LIMIT %(batch_size)s
    FOR UPDATE
), skipped AS (
    UPDATE {outbox} AS o
    SET state = 'skipped', skip_reason = %(reason)s
    FROM chosen
    WHERE o.id = chosen.id AND o.state = %(from_state)s
    RETURNING o.id
)
SELECT (SELECT count(*) FROM skipped) AS changed, (SELECT max(id) FROM chosen) AS last_id;

-- name: purgeable_count
SELECT count(*) AS events
FROM {outbox}
WHERE id < %(upper_id)s
  AND state IN ('sent', 'skipped')
  AND created_at < %(cutoff)s
  AND coalesce(sent_at, parked_at, created_at) < %(cutoff)s;

-- name: purge_batch
-- Rows another session holds (a relay marking or an operator retrying) are left for the
-- next run instead of waited for. Pending and parked rows are never candidates.
WITH chosen AS (
    SELECT id FROM {outbox}
    WHERE id > %(after_id)s AND id < %(upper_id)s
      AND state IN ('sent', 'skipped')
      AND created_at < %(cutoff)s
      AND coalesce(sent_at, parked_at, created_at) < %(cutoff)s
    ORDER BY id
    LIMIT %(batch_size)s
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM {outbox} AS o
    USING chosen
    WHERE o.id = chosen.id AND o.state IN ('sent', 'skipped')
    RETURNING o.id
)
SELECT (SELECT count(*) FROM deleted) AS deleted, (SELECT max(id) FROM chosen) AS last_id;

-- name: replay_batch
-- Copies go in as new pending rows, in the order of the originals, so the live relay
-- publishes them in outbox order with everything else: per-key order holds by
-- construction and no second producer competes with the relay.
WITH chosen AS (
    SELECT id, event_id, topic, key, payload, payload_bytes, headers, event_type,
           aggregate_type
    FROM {outbox}
    WHERE {selection}
    ORDER BY id
    LIMIT %(batch_size)s
), copied AS (
    INSERT INTO {outbox} (topic, key, payload, payload_bytes, headers, event_type,
                          aggregate_type)
    SELECT coalesce(%(to_topic)s::text, topic), key, payload, payload_bytes,
           headers || jsonb_build_object('replayed', 'true', 'replay_of', event_id::text),
           event_type, aggregate_type
    FROM chosen
    ORDER BY id
    RETURNING id
)
SELECT (SELECT count(*) FROM copied) AS copied,
       (SELECT min(id) FROM copied) AS first_copy_id,
       (SELECT max(id) FROM copied) AS last_copy_id,
       (SELECT max(id) FROM chosen) AS last_id;

-- name: unsent_in_range
-- Uses the partial indexes: how many of the copies in [first, last] are still waiting.
SELECT (SELECT count(*) FROM {outbox}
        WHERE state = 'pending' AND id >= %(first_id)s AND id <= %(last_id)s
          AND headers ? 'replay_of') AS pending,
       (SELECT count(*) FROM {outbox}
        WHERE state = 'parked' AND id >= %(first_id)s AND id <= %(last_id)s
          AND headers ? 'replay_of') AS parked;

-- name: server_facts
SELECT current_user AS role, current_database() AS database,
       current_setting('server_version') AS server_version,
       current_setting('wal_level') AS wal_level,
       r.rolsuper AS superuser, r.rolreplication AS replication
FROM pg_roles r WHERE r.rolname = current_user;

-- name: publication
SELECT p.pubinsert AS publishes_inserts,
       p.puballtables OR EXISTS (
           SELECT 1 FROM pg_publication_tables t
           WHERE t.pubname = p.pubname AND t.schemaname = %(schema)s::text
             AND t.tablename = %(table)s::text
       ) AS covers_outbox
FROM pg_publication p WHERE p.pubname = %(publication)s::text;

-- name: emit_message_allowed
SELECT coalesce(bool_or(has_function_privilege(p.oid, 'EXECUTE')), false) AS allowed
FROM pg_proc p WHERE p.proname = 'pg_logical_emit_message';

-- name: privileges
SELECT has_schema_privilege(%(schema)s::text, 'USAGE') AS schema_usage,
       has_table_privilege(outbox, 'SELECT') AS can_select,
       has_table_privilege(outbox, 'UPDATE') AS can_update,
       has_table_privilege(outbox, 'DELETE') AS can_delete
FROM (SELECT format('%%I.%%I', %(schema)s::text, %(table)s::text) AS outbox) AS target;

-- name: outbox_exists
SELECT to_regclass(format('%%I.%%I', %(schema)s::text, %(table)s::text)) IS NOT NULL AS found;

-- name: pending_topics
SELECT DISTINCT topic, event_type, aggregate_type
FROM {outbox}
WHERE state = 'pending'
LIMIT 1000;
