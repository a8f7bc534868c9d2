-- Statements run on the LISTEN connection. 7243 is notifyq's advisory lock class; the jobs_wake
-- trigger in migration 0001 uses the same number.

-- name: take_idle_locks :exec
-- Going idle: tell producers (through their jobs_wake trigger) that this daemon waits on these queues.
SELECT pg_advisory_lock_shared(7243, hashtext(q)) FROM unnest($1::text[]) AS q;

-- name: release_idle_locks :exec
-- Going busy. This connection holds no other advisory lock, so releasing all of them is exact.
SELECT pg_advisory_unlock_all();

-- name: probe :exec
-- Self-probe: a notification on this daemon's own channel must come back on this connection.
SELECT pg_notify($1::text, '');

-- name: end_stale_listener :exec
-- After a reconnect: end this daemon's previous LISTEN backend if a half-open socket left it behind.
-- Matched on pid and on this daemon's own application_name (it carries the worker id), so a pid
-- reused by any other session, a peer daemon's included, is never hit.
SELECT pg_terminate_backend(a.pid)
FROM pg_stat_activity AS a
WHERE a.pid = $1::int
  AND a.application_name = $2::text
  AND a.usename = current_user
  AND a.pid <> pg_backend_pid();
