-- Relay-owned columns: only roles that may UPDATE the outbox (the relay, its owner) set
-- state, attempts, id, created_at and the rest; a service's insert gets the defaults.
-- Column-level INSERT grants (outbox-relay grants) keep services off these columns; this
-- trigger also covers roles that still hold a table-wide INSERT from older grants, and
-- inserts through any function. It runs as the outbox's owner (SECURITY DEFINER) so it may
-- draw the identity sequence; the WHEN clause is evaluated as the inserting role.
CREATE FUNCTION {relay_owned_function}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    IF NEW.state IS DISTINCT FROM 'pending' OR NEW.attempts IS DISTINCT FROM 0
        OR NEW.sent_at IS NOT NULL OR NEW.last_error IS NOT NULL
        OR NEW.parked_at IS NOT NULL OR NEW.skip_reason IS NOT NULL
    THEN
        -- No percent sign in this file: Alembic's offline SQL doubles it (relay/alembic.py).
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege', MESSAGE =
            'only the relay sets state, attempts, sent_at, last_error, parked_at and '
            'skip_reason of ' || TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME;
    END IF;
    -- Both may have been set (created_at by value, id with OVERRIDING SYSTEM VALUE)
    -- and neither can be told apart from its default: draw them again.
    NEW.created_at := clock_timestamp();
    NEW.id := nextval(pg_get_serial_sequence(
        quote_ident(TG_TABLE_SCHEMA) || '.' || quote_ident(TG_TABLE_NAME), 'id'
    ));
    RETURN NEW;
END;
$$;

REVOKE ALL ON FUNCTION {relay_owned_function}() FROM PUBLIC;

CREATE TRIGGER {relay_owned_trigger} BEFORE INSERT ON {outbox}
    FOR EACH ROW WHEN (NOT has_table_privilege({outbox_regclass}::regclass, 'UPDATE'))
    EXECUTE FUNCTION {relay_owned_function}();

-- Leadership: one row, updated only by the relay's role (relay/leadership.py). Services
-- get no privilege on it, so no service can take or hold the leadership.
CREATE TABLE {leader} (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- Bumped by each new leader: a fencing token for logs and operators.
    epoch bigint NOT NULL DEFAULT 0,
    -- The leader's lease session: its backend pid, role and application name.
    pid integer,
    role_name text,
    application_name text,
    acquired_at timestamptz,
    leader_until timestamptz
);
INSERT INTO {leader} DEFAULT VALUES;
REVOKE ALL ON {leader} FROM PUBLIC;
