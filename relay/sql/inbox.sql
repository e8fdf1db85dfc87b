-- The inbox (relay/inbox): claims inside the consumer's transaction, and the operator
-- commands. Placeholders: relay.inbox.names.

-- name: claim_many
-- One statement for a batch: the ids this consumer had not seen come back. ON CONFLICT
-- DO NOTHING waits for a concurrent transaction holding the same key and returns
-- nothing if it committed, the row if it rolled back: never two winners.
INSERT INTO {inbox} (consumer, event_id, topic, partition, "offset")
SELECT CAST({consumer} AS text), c.event_id, c.topic, c.partition, c.offset
FROM unnest(CAST({event_ids} AS uuid[]), CAST({topics} AS text[]),
            CAST({partitions} AS integer[]), CAST({offsets} AS bigint[]))
     AS c (event_id, topic, partition, "offset")
ON CONFLICT (consumer, event_id) DO NOTHING
RETURNING event_id

-- name: status
SELECT c.consumer,
       (SELECT count(*) FROM {inbox} i
         WHERE i.consumer = c.consumer AND i.processed_at > now() - interval '1 minute'),
       (SELECT count(*) FROM {inbox} i
         WHERE i.consumer = c.consumer AND i.processed_at > now() - interval '1 hour'),
       (SELECT count(*) FROM {parked} p
         WHERE p.consumer = c.consumer AND p.state IN ('parked', 'retry')),
       (SELECT min(p.parked_at) FROM {parked} p
         WHERE p.consumer = c.consumer AND p.state IN ('parked', 'retry'))
FROM (SELECT DISTINCT consumer FROM {parked}
      UNION SELECT DISTINCT consumer FROM {inbox}) AS c
ORDER BY c.consumer

-- name: purge_batch
-- A short transaction per batch; rows a consumer is claiming right now are not waited for.
DELETE FROM {inbox}
WHERE ctid IN (
    SELECT ctid FROM {inbox}
    WHERE processed_at < {cutoff}
    LIMIT {batch_size}
    FOR UPDATE SKIP LOCKED
)

-- name: drop_inbox
-- Everything `inbox migrate` created, claims included; the schema stays.
DROP TABLE IF EXISTS {parked};
DROP TABLE IF EXISTS {inbox};
DROP TABLE IF EXISTS {migrations};

-- name: consumer_role
-- A consuming service's role: claims (INSERT, and SELECT for ON CONFLICT / RETURNING),
-- parks records, reads and releases its parked records. No DELETE: only the operator's
-- `inbox purge` (the tables' owner) removes claims.
GRANT USAGE ON SCHEMA {schema} TO {role};
GRANT SELECT, INSERT ON {inbox} TO {role};
GRANT SELECT, INSERT, UPDATE ON {parked} TO {role};
GRANT SELECT ON {migrations} TO {role};

-- name: held_keys
-- Keys that wait behind a parked record of this consumer (the partial index is tiny),
-- and whether one of them is still parked (else all are released for a retry).
SELECT topic, key, bool_or(state = 'parked') FROM {parked}
WHERE consumer = %(consumer)s AND state IN ('parked', 'retry') AND key IS NOT NULL
GROUP BY topic, key

-- name: park
-- A redelivered record that is parked already stays one row.
INSERT INTO {parked} AS p (consumer, event_id, topic, partition, "offset", key, value,
                           headers, error, attempts, state)
VALUES (%(consumer)s, %(event_id)s, %(topic)s, %(partition)s, %(offset)s, %(key)s,
        %(value)s, %(headers)s, %(error)s, %(attempts)s, %(state)s)
ON CONFLICT (consumer, topic, partition, "offset") DO NOTHING

-- name: next_retry
-- The oldest released record whose key has no older record still parked.
SELECT p.id, p.event_id, p.topic, p.partition, p."offset", p.key, p.value, p.headers
FROM {parked} p
WHERE p.consumer = %(consumer)s AND p.state = 'retry'
  AND NOT EXISTS (
      SELECT 1 FROM {parked} e
      WHERE e.consumer = p.consumer AND e.topic = p.topic AND e.key = p.key
        AND e.state = 'parked' AND e.id < p.id)
ORDER BY p.id
LIMIT 1
FOR UPDATE SKIP LOCKED

-- name: retried
UPDATE {parked} SET state = 'applied', released_at = now() WHERE id = %(id)s

-- name: retry_failed
UPDATE {parked} SET state = 'parked', attempts = attempts + 1, error = %(error)s
WHERE id = %(id)s

-- name: release
-- inbox retry / skip: parked records of one consumer, by key, event id or all.
UPDATE {parked} SET state = %(new_state)s, released_at = now()
WHERE consumer = %(consumer)s AND state = 'parked'
  AND (%(all)s OR key = ANY(%(keys)s) OR event_id = ANY(%(event_ids)s))
