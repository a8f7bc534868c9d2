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
