-- Statements for the CLI and the producer API.

-- name: enqueue :one
-- The payload travels as text and is cast here, so the caller's own jsonb codec does not matter.
SELECT notifyq.enqueue($1::text, $2::text::jsonb, $3::text, $4::timestamptz, $5::int, $6::text,
                       $7::int, $8::interval) AS id;

-- name: live_workers :many
SELECT w.id, w.hostname, w.pid, w.queues, w.tasks, w.concurrency, w.running, w.started_at,
       w.last_seen, extract(epoch FROM now() - w.last_seen)::float8 AS seen_seconds_ago
FROM notifyq.workers AS w
WHERE w.last_seen > now() - make_interval(secs => $1::float8)
ORDER BY w.hostname, w.pid;

-- name: queued_tasks :many
-- Queued work per queue and task, for `notifyq check` to compare with the handlers that exist.
SELECT j.queue, j.task, count(*)::bigint AS jobs
FROM notifyq.jobs AS j
WHERE j.state = 'queued'
GROUP BY j.queue, j.task
ORDER BY j.queue, j.task;
