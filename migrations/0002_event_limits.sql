-- Bounds on what one event may carry besides its payload (relay/producer.py checks the
-- same limits first, with a clear InvalidEventError; these CHECKs guard every other
-- writer, outbox_publish() and outbox_publish_bytes() included, since they insert here).
--
-- key_size: the key, at most 1024 bytes of UTF-8. A key is an id; the parked index
-- (key, id) is a btree, whose entries PostgreSQL caps at about 2.7 kB, so a much longer
-- key could not even be parked.
-- headers_count: at most 64 headers; tracing and routing need a handful.
-- headers_size: the headers as jsonb text, at most 65536 bytes, far below Kafka's default
-- 1 MiB record limit, so the headers alone never make a record the broker refuses.
--
-- NOT VALID: new and updated rows are checked; rows already in the table are not read, so
-- the migration is instant on a large outbox and cannot fail on an old sent row. An
-- operator may run ALTER TABLE ... VALIDATE CONSTRAINT later.
-- The header count uses jsonb_path_query_array ('$.*': the values of the object), a plain
-- immutable function: a CHECK cannot hold a subquery over jsonb_object_keys.
ALTER TABLE {outbox}
    ADD CONSTRAINT {key_size} CHECK (octet_length(key) <= 1024) NOT VALID,
    ADD CONSTRAINT {headers_count} CHECK (
        jsonb_typeof(headers) <> 'object'
        OR jsonb_array_length(jsonb_path_query_array(headers, '$.*')) <= 64
    ) NOT VALID,
    ADD CONSTRAINT {headers_size} CHECK (octet_length(headers::text) <= 65536) NOT VALID;
