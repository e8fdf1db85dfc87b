-- Writing events into the outbox from Python (relay/producer.py).
--
-- insert_events: {event_ids} ... {aggregate_types} are bind parameters, each an array with
-- one element per event, so a whole batch is one statement and one round trip, whatever
-- its size. WITH ORDINALITY + ORDER BY: ids (the outbox order) follow the order of the
-- call, so events of one key are relayed in the order the service wrote them.

-- name: insert_events
INSERT INTO {outbox} (
    event_id, topic, key, payload, payload_bytes, headers, event_type, aggregate_type
)
SELECT
    e.event_id, e.topic, e.key, e.payload::jsonb, e.payload_bytes, e.headers::jsonb,
    e.event_type, e.aggregate_type
FROM unnest(
    CAST({event_ids} AS uuid[]),
    CAST({topics} AS text[]),
    CAST({keys} AS text[]),
    CAST({payloads} AS text[]),
    CAST({payloads_bytes} AS bytea[]),
    CAST({headers} AS text[]),
    CAST({event_types} AS text[]),
    CAST({aggregate_types} AS text[])
) WITH ORDINALITY AS e(
    event_id, topic, key, payload, payload_bytes, headers, event_type, aggregate_type, position
)
ORDER BY e.position
