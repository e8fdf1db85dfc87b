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

-- name: restrict_messages
-- With --message-prefix, whoever may call pg_logical_emit_message may publish a
-- table-less event: only the roles granted below may. The function belongs to the
-- bootstrap superuser, so only a superuser can revoke it from PUBLIC (managed services
-- give none: see the README's Security section). Every overload, whatever the version.
DO $grants$
DECLARE f regprocedure;
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'restricting pg_logical_emit_message to the app roles needs a superuser'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    FOR f IN SELECT oid::regprocedure FROM pg_proc
        WHERE proname = 'pg_logical_emit_message' AND pronamespace = 'pg_catalog'::regnamespace
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$grants$;

-- name: emit_messages
-- The app roles emit table-less events; the relay's role emits its WAL heartbeats.
DO $grants$
DECLARE f regprocedure;
BEGIN
    FOR f IN SELECT oid::regprocedure FROM pg_proc
        WHERE proname = 'pg_logical_emit_message' AND pronamespace = 'pg_catalog'::regnamespace
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', f, {role_name});
    END LOOP;
END
$grants$;

-- name: emit_message_public
-- doctor: may every role emit table-less events?
SELECT coalesce(bool_or(has_function_privilege('public', p.oid, 'EXECUTE')), false) AS public
FROM pg_proc p WHERE p.proname = 'pg_logical_emit_message';

-- name: roles_beyond_events
-- doctor: roles that may insert more than an event's own columns yet may not update the
-- outbox (the relay may): the trigger refuses their forgeries, the grant is still too wide.
SELECT coalesce(array_agg(r.rolname::text ORDER BY r.rolname), '{{}}') AS roles
FROM pg_roles r
WHERE NOT r.rolsuper AND r.rolname !~ '^pg_'
    AND has_column_privilege(r.oid, {outbox_regclass}::regclass, 'state', 'INSERT')
    AND NOT has_table_privilege(r.oid, {outbox_regclass}::regclass, 'UPDATE');

-- name: can_lead
-- doctor: may this role take the leadership lease? NULL when the lease table is missing.
SELECT CASE WHEN to_regclass({leader_regclass}::text) IS NULL THEN NULL
    ELSE has_table_privilege({leader_regclass}::text, 'SELECT, UPDATE') END AS can_lead;
