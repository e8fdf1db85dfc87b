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
