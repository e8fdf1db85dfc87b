-- Queries of the poll source (relay/poll.py). Placeholders in braces are identifiers
-- filled through psycopg.sql; values are bound parameters.

-- name: check
-- Fails with undefined_table when the outbox was not migrated.
SELECT 1 FROM {outbox} LIMIT 0;

-- name: fetch_park
-- created_at comes as text, converted row by row (relay/poll.py): a value Python has no
-- datetime for ('infinity', a year past 9999) parks that row instead of failing the fetch.
-- The next pending events after %(after)s, in id order, except the %(in_flight)s ones
-- (fetched, not yet acknowledged: a new scan may start while a few are being marked),
-- and without the events whose key has
-- a parked event earlier in the outbox (they wait behind it). The parked rows' count and
-- id sum come from the same snapshot: when they change in the middle of a scan, an
-- operator released (or skipped) a parked event and the scan starts over, so the
-- released event goes before the later events of its key. (No rows, no signature: an
-- empty fetch ends the scan anyway.)
SELECT
    (SELECT count(*) FROM {outbox} WHERE state = 'parked') AS parked_count,
    (SELECT coalesce(sum(id), 0) FROM {outbox} WHERE state = 'parked') AS parked_sum,
    e.id, e.event_id::text, e.topic, e.key, e.payload::text, e.payload_bytes,
    e.headers::text, e.event_type, e.aggregate_type, e.created_at::text, e.attempts
FROM {outbox} AS e
WHERE e.state = 'pending'
    AND e.id > %(after)s::bigint
    AND e.id <> ALL(%(in_flight)s::bigint[])
    AND (e.key IS NULL OR NOT EXISTS (
        SELECT FROM {outbox} AS p
        WHERE p.state = 'parked' AND p.key = e.key AND p.id < e.id
    ))
ORDER BY e.id
LIMIT %(limit)s;

-- name: fetch_skip
-- The next pending events after %(after)s, in id order; parked events block nothing.
SELECT 0::bigint AS parked_count, 0::numeric AS parked_sum,
    e.id, e.event_id::text, e.topic, e.key, e.payload::text, e.payload_bytes,
    e.headers::text, e.event_type, e.aggregate_type, e.created_at::text, e.attempts
FROM {outbox} AS e
WHERE e.state = 'pending' AND e.id > %(after)s::bigint
    AND e.id <> ALL(%(in_flight)s::bigint[])
ORDER BY e.id
LIMIT %(limit)s;

-- name: mark_sent
UPDATE {outbox} SET state = 'sent', sent_at = now()
WHERE id = ANY(%(ids)s::bigint[]) AND state = 'pending';

-- name: delete_sent
DELETE FROM {outbox} WHERE id = ANY(%(ids)s::bigint[]) AND state = 'pending';

-- name: record_failure
-- One permanent publish failure: count the attempt, keep the error, park when told to.
UPDATE {outbox}
SET attempts = %(attempts)s,
    last_error = %(error)s,
    state = CASE WHEN %(park)s THEN 'parked' ELSE state END,
    parked_at = CASE WHEN %(park)s THEN now() ELSE parked_at END
WHERE id = %(id)s::bigint AND state = 'pending';

-- name: backlog
SELECT
    (SELECT count(*) FROM {outbox} WHERE state = 'pending') AS pending_events,
    (SELECT count(*) FROM {outbox} WHERE state = 'parked') AS parked_events,
    -- Only a created_at Python has a datetime for (not 'infinity', a year past 9999):
    -- such a row is parked by the fetch, and must not fail this query meanwhile.
    (SELECT created_at FROM {outbox} WHERE state = 'pending'
        AND created_at BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00'
        ORDER BY id LIMIT 1) AS oldest_unsent_at;

-- name: listen
LISTEN {channel_name};
