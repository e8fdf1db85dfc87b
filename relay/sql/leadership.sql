-- Leadership (relay/leadership.py): one lease row per outbox, {leader}, that only the
-- relay's role may update. Every statement is its own short autocommit transaction: no
-- session holds a transaction open (that would pin the xmin horizon of the cluster).

-- name: take
-- Free when the lease ran out, or when the session that holds it has ended (killed,
-- disconnected: its pid is gone from pg_stat_activity), so failover takes seconds.
UPDATE {leader} SET
    epoch = epoch + 1,
    pid = pg_backend_pid(),
    role_name = current_user,
    application_name = current_setting('application_name'),
    acquired_at = now(),
    leader_until = now() + make_interval(secs => %(ttl_s)s)
WHERE leader_until IS NULL OR leader_until < now()
    OR pid IS NULL OR pid = pg_backend_pid()
    OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = {leader}.pid)
RETURNING epoch;

-- name: renew
UPDATE {leader} SET leader_until = now() + make_interval(secs => %(ttl_s)s)
WHERE pid = pg_backend_pid() AND epoch = %(epoch)s
RETURNING epoch;

-- name: give_up
UPDATE {leader} SET leader_until = NULL, pid = NULL
WHERE pid = pg_backend_pid() AND epoch = %(epoch)s;

-- name: holder
SELECT l.epoch, l.pid, l.role_name, l.application_name, l.acquired_at, l.leader_until,
    coalesce(l.leader_until >= now() AND a.pid IS NOT NULL, false) AS held
FROM {leader} l LEFT JOIN pg_stat_activity a ON a.pid = l.pid;
