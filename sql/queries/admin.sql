-- Statements for the CLI and the producer API.

-- name: enqueue :one
-- The payload travels as text and is cast here, so the caller's own jsonb codec does not matter.
SELECT notifyq.enqueue($1::text, $2::text::jsonb, $3::text, $4::timestamptz, $5::int, $6::text,
                       $7::int, $8::interval) AS id;

-- name: live_workers :many
-- Workers whose last heartbeat is within two of their own leases.
SELECT w.id, w.hostname, w.pid, w.queues, w.tasks, w.concurrency, w.running, w.started_at,
       w.last_seen, extract(epoch FROM now() - w.last_seen)::float8 AS seen_seconds_ago
FROM notifyq.workers AS w
WHERE w.last_seen > now() - make_interval(secs => 2 * w.lease_seconds)
ORDER BY w.hostname, w.pid;
