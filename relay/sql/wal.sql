-- WAL mode: prerequisites, the slot, the hand-over from the table, marking rows sent.
-- Placeholders in braces are quoted identifiers or literals (psycopg.sql), never text.

-- name: server_settings
SELECT current_setting('wal_level') AS wal_level,
       (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)
           AS can_replicate,
       current_user AS role,
       -- Exact names (to_regclass of a text would fold a mixed-case name to lower case).
       EXISTS (
           SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = %(schema)s AND c.relname = %(table)s
       ) AS outbox_exists

-- name: publication
SELECT p.pubinsert,
       EXISTS (
           SELECT 1 FROM pg_publication_tables t
           WHERE t.pubname = p.pubname AND t.schemaname = %(schema)s AND t.tablename = %(table)s
       ) AS covers_outbox
FROM pg_publication p
WHERE p.pubname = %(publication)s

-- name: create_publication
CREATE PUBLICATION {publication} FOR TABLE {outbox} WITH (publish = 'insert')

-- name: slot_status
-- What status, doctor, `slot status` and the relay's lag metrics read. On a standby
-- there is no current WAL position to measure from: the byte counts are NULL there.
SELECT s.slot_name,
       s.plugin,
       s.database,
       s.database = current_database() AS in_this_database,
       s.active,
       s.active_pid,
       s.wal_status,
       s.safe_wal_size,
       s.restart_lsn::text AS restart_lsn,
       s.confirmed_flush_lsn::text AS confirmed_flush_lsn,
       CASE WHEN NOT pg_is_in_recovery()
            THEN pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint
       END AS retained_bytes,
       CASE WHEN NOT pg_is_in_recovery()
            THEN pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint
       END AS unconfirmed_bytes,
       r.state AS sender_state,
       extract(epoch FROM r.flush_lag)::float8 AS flush_lag_seconds
FROM pg_replication_slots s
LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
WHERE s.slot_name = %(slot_name)s::text

-- name: max_slot_wal_keep_size
-- A server setting, not a slot property: in bytes, -1 for unlimited (a stopped relay's
-- slot may then fill the disk).
SELECT CASE WHEN setting::bigint < 0 THEN -1
            ELSE setting::bigint * CASE unit WHEN 'kB' THEN 1024 WHEN 'MB' THEN 1048576
                                              WHEN 'GB' THEN 1073741824 ELSE 1 END
       END AS bytes
FROM pg_settings WHERE name = 'max_slot_wal_keep_size'

-- name: drop_slot
SELECT pg_drop_replication_slot(%(slot_name)s)

-- name: heartbeat
SELECT pg_logical_emit_message(false, 'outbox-relay-heartbeat', '')

-- name: insert_position
SELECT pg_current_wal_insert_lsn()::text

-- name: sweep_snapshot
-- Which transactions the sweep's snapshot sees, and a WAL position every one of them
-- committed before: the hand-over rule between the table and the stream.
SELECT pg_current_wal_insert_lsn()::text, pg_current_snapshot()::text

-- name: pending_rows
-- The hand-over and the fallback after a lost slot: the table is the truth.
-- created_at comes as text (datestyle ISO), converted row by row (relay/wal/_source.py):
-- a value Python has no datetime for ('infinity', a year past 9999) parks that row
-- instead of failing every sweep.
SELECT id, event_id::text, topic, key, payload::text, payload_bytes, headers::text,
       event_type, aggregate_type, created_at::text, attempts
FROM {outbox}
WHERE state = 'pending' AND id > %(after_id)s
ORDER BY id
LIMIT %(limit)s

-- name: pending_rows_of_keys
-- After an operator's release: only the released keys' rows (and released rows
-- without a key), in id order. created_at as in pending_rows.
SELECT id, event_id::text, topic, key, payload::text, payload_bytes, headers::text,
       event_type, aggregate_type, created_at::text, attempts
FROM {outbox}
WHERE state = 'pending' AND id > %(after_id)s
  AND (key = ANY(%(keys)s::text[]) OR (key IS NULL AND id = ANY(%(ids)s::bigint[])))
ORDER BY id
LIMIT %(limit)s

-- name: parked_rows
SELECT id, key FROM {outbox} WHERE state = 'parked'

-- name: mark_sent
UPDATE {outbox} SET state = 'sent', sent_at = now()
WHERE id = ANY(%(ids)s::bigint[]) AND state = 'pending'

-- name: mark_sent_seen
-- After a mark that matched fewer rows than it was given: mark again, and say which rows
-- this statement marked and the snapshot it ran in (one statement, one snapshot: a
-- second statement may see a commit the mark did not, and a pending row would pass for
-- settled). A row the snapshot's transactions include and the mark missed is settled.
WITH marked AS (
    UPDATE {outbox} SET state = 'sent', sent_at = now()
    WHERE id = ANY(%(ids)s::bigint[]) AND state = 'pending'
    RETURNING id
)
SELECT ARRAY(SELECT id FROM marked), pg_current_snapshot()::text

-- name: delete_sent
DELETE FROM {outbox} WHERE id = ANY(%(ids)s::bigint[]) AND state = 'pending'

-- name: delete_sent_seen
-- As mark_sent_seen, for --on-sent delete.
WITH deleted AS (
    DELETE FROM {outbox} WHERE id = ANY(%(ids)s::bigint[]) AND state = 'pending'
    RETURNING id
)
SELECT ARRAY(SELECT id FROM deleted), pg_current_snapshot()::text

-- name: record_failure
UPDATE {outbox} SET attempts = attempts + 1, last_error = %(error)s
WHERE id = %(id)s

-- name: park_row
UPDATE {outbox} SET state = 'parked', parked_at = now(), last_error = %(error)s
WHERE id = %(id)s AND state = 'pending'

-- name: park_message
-- A table-less event that cannot be published is parked as an outbox row: operators
-- see and replay it like any parked row, and its key blocks later events the same way.
-- The stream ignores the insert (its state is not 'pending').
INSERT INTO {outbox} (event_id, topic, key, payload_bytes, headers, state, parked_at,
                      last_error, attempts)
VALUES (%(event_id)s, %(topic)s, %(key)s, %(value)s, %(headers)s, 'parked', now(),
        %(error)s, %(attempts)s)
ON CONFLICT (event_id) DO NOTHING

-- name: hold_message
-- A table-less event whose key waits behind a parked event becomes a pending row: the
-- relay publishes it from the table once an operator releases the parked one.
INSERT INTO {outbox} (event_id, topic, key, payload_bytes, headers)
VALUES (%(event_id)s, %(topic)s, %(key)s, %(value)s, %(headers)s)
ON CONFLICT (event_id) DO NOTHING
