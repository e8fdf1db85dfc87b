-- Least-privilege grants (relay/roles.py, `outbox-relay grants`). {role} is the role
-- being granted; the other placeholders name the outbox's objects (relay.sql.identifiers).

-- name: relay
-- Poll mode reads pending rows and marks them sent (UPDATE) or deletes them (DELETE);
-- the operator commands (status, doctor) read the version table. No INSERT.
GRANT USAGE ON SCHEMA {schema} TO {role};
GRANT SELECT, UPDATE, DELETE ON {outbox} TO {role};
GRANT SELECT ON {migrations} TO {role};
-- Leadership is a lease row only the relay's role may update (relay/leadership.py).
GRANT SELECT, UPDATE ON {leader} TO {role};

-- name: relay_wal
-- WAL mode streams through a replication connection and a logical slot: both need the
-- REPLICATION attribute (which only a superuser can give). Publications have no
-- privileges of their own: a role with REPLICATION may stream any publication.
ALTER ROLE {role} REPLICATION;

-- name: relay_messages
-- With --message-prefix, a table-less event that cannot be published is parked as a row.
GRANT INSERT ON {outbox} TO {role};

-- name: app
-- Services write events and nothing else: INSERT of the event's own columns, and EXECUTE
-- on the publish functions. The relay's columns (id, state, attempts, created_at, sent_at,
-- last_error, parked_at, skip_reason) get their defaults: a table-wide INSERT from older
-- grants is revoked first, and the outbox's trigger refuses or redraws them anyway.
-- The functions return the new event_id with INSERT ... RETURNING, which needs SELECT on
-- that one column: the role can read event ids, never payloads, keys or states.
GRANT USAGE ON SCHEMA {schema} TO {role};
REVOKE INSERT ON {outbox} FROM {role};
GRANT INSERT (topic, key, payload, payload_bytes, headers, event_type, aggregate_type, event_id)
    ON {outbox} TO {role};
GRANT SELECT (event_id) ON {outbox} TO {role};
GRANT EXECUTE ON FUNCTION {publish_function}(text, text, jsonb, jsonb, text, text) TO {role};
GRANT EXECUTE ON FUNCTION {publish_bytes_function}(text, text, bytea, jsonb, text, text)
    TO {role};
