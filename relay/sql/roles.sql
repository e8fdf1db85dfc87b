-- Least-privilege grants (relay/roles.py, `outbox-relay grants`). {role} is the role
-- being granted; the other placeholders name the outbox's objects (relay.sql.identifiers).

-- name: relay
-- Poll mode reads pending rows and marks them sent (UPDATE) or deletes them (DELETE);
-- the operator commands (status, doctor) read the version table. No INSERT.
GRANT USAGE ON SCHEMA {schema} TO {role};
GRANT SELECT, UPDATE, DELETE ON {outbox} TO {role};
GRANT SELECT ON {migrations} TO {role};

-- name: relay_wal
-- WAL mode streams through a replication connection and a logical slot: both need the
-- REPLICATION attribute (which only a superuser can give). Publications have no
-- privileges of their own: a role with REPLICATION may stream any publication.
ALTER ROLE {role} REPLICATION;

-- name: relay_messages
-- With --message-prefix, a table-less event that cannot be published is parked as a row.
GRANT INSERT ON {outbox} TO {role};

-- name: app
-- Services write events and nothing else: INSERT, and EXECUTE on the publish functions.
-- The functions return the new event_id with INSERT ... RETURNING, which needs SELECT on
-- that one column: the role can read event ids, never payloads, keys or states.
GRANT USAGE ON SCHEMA {schema} TO {role};
GRANT INSERT ON {outbox} TO {role};
GRANT SELECT (event_id) ON {outbox} TO {role};
GRANT EXECUTE ON FUNCTION {publish_function}(text, text, jsonb, jsonb, text, text) TO {role};
GRANT EXECUTE ON FUNCTION {publish_bytes_function}(text, text, bytea, jsonb, text, text)
    TO {role};
