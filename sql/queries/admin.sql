-- Statements for the CLI and the producer API.

-- name: enqueue :one
-- The payload travels as text and is cast here, so the caller's own jsonb codec does not matter.
SELECT notifyq.enqueue($1::text, $2::text::jsonb, $3::text, $4::timestamptz, $5::int, $6::text,
                       $7::int, $8::interval) AS id;

-- name: live_worker :fragment
-- A row of notifyq.workers (named w) whose daemon heartbeated within two of its own leases.
w.last_seen > now() - make_interval(secs => 2 * w.lease_seconds)

-- name: live_workers :many
-- Workers whose last heartbeat is within two of their own leases.
SELECT w.id, w.hostname, w.pid, w.queues, w.tasks, w.concurrency, w.lease_seconds, w.schedules, w.running,
       w.started_at, w.last_seen, extract(epoch FROM now() - w.last_seen)::float8 AS seen_seconds_ago
FROM notifyq.workers AS w
WHERE /* include: live_worker */
ORDER BY w.hostname, w.pid;

-- name: cancel_job :one
-- Cancel a job that has not started (queued -> cancelled). Returns the job's state afterwards, or NULL
-- when there is no such job; a running or finished job is left as it is.
WITH done AS (
    UPDATE notifyq.jobs AS j
    SET state = 'cancelled', finished_at = notifyq.now()
    WHERE j.id = $1::bigint AND j.state = 'queued'
    RETURNING j.state::text AS state
)
SELECT coalesce((SELECT state FROM done),
                (SELECT j.state::text FROM notifyq.jobs AS j WHERE j.id = $1::bigint)) AS state;

-- name: retry_job :one
-- Put a failed or cancelled job back in the queue, runnable now, with its attempts, unclear crashes and
-- snoozes reset.
-- Returns the job's state afterwards, or NULL when there is no such job.
WITH done AS (
    UPDATE notifyq.jobs AS j
    SET state = 'queued', attempts = 0, unclear_crashes = 0, snoozes = 0, run_at = notifyq.now(), finished_at = NULL
    WHERE j.id = $1::bigint AND j.state IN ('failed', 'cancelled')
    RETURNING j.state::text AS state
)
SELECT coalesce((SELECT state FROM done),
                (SELECT j.state::text FROM notifyq.jobs AS j WHERE j.id = $1::bigint)) AS state;

-- name: show_job :one
SELECT j.id, j.queue, j.task, j.payload::text AS payload, j.priority, j.run_at, j.state::text AS state,
       j.attempts, j.max_attempts, j.worker_id, j.leased_until, j.dedup_key, j.last_error,
       j.result::text AS result, j.created_at, j.started_at, j.finished_at, j.unclear_crashes, j.snoozes,
       j.schedule, j.schedule_tick, j.backfilled
FROM notifyq.jobs AS j
WHERE j.id = $1::bigint;

-- name: list_jobs :many
-- Newest first; NULL filters match everything.
SELECT j.id, j.queue, j.task, j.state::text AS state, j.attempts, j.max_attempts, j.run_at,
       j.finished_at, left(split_part(j.last_error, E'\n', 1), 120) AS error
FROM notifyq.jobs AS j
WHERE ($1::text IS NULL OR j.state::text = $1::text)
  AND ($2::text IS NULL OR j.queue = $2::text)
  AND ($3::text IS NULL OR j.task = $3::text)
ORDER BY j.id DESC
LIMIT $4::int;

-- name: enqueue_many :many
-- Payloads travel as text and are cast here, like enqueue's.
SELECT e.pos, e.id
FROM notifyq.enqueue_many($1::text[], $2::text[]::jsonb[], $3::text[], $4::timestamptz[], $5::int[],
                          $6::text[], $7::int[], $8::interval[]) AS e;
