-- Removing the outbox (relay/alembic.py: drop_outbox, the downgrade of create_outbox).
-- Everything the migrations created, and nothing else: the schema stays.

-- name: drop_outbox
DROP PUBLICATION IF EXISTS {publication};
DROP TABLE IF EXISTS {outbox};
DROP FUNCTION IF EXISTS {notify_function}();
DROP FUNCTION IF EXISTS {relay_owned_function}();
DROP TABLE IF EXISTS {leader};
DROP FUNCTION IF EXISTS {publish_function}(text, text, jsonb, jsonb, text, text);
DROP FUNCTION IF EXISTS {publish_bytes_function}(text, text, bytea, jsonb, text, text);
DROP TABLE IF EXISTS {migrations};
