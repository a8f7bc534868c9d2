-- Statements for the database gauges, `notifyq status` and `notifyq check`.

-- name: queue_stats :many
-- Jobs per queue, task and state ('scheduled' = queued with a future run_at), with the age of the
-- oldest run_at in each group (for 'queued' that is the oldest runnable job). Only the states with a
-- partial index (queued, running, failed): succeeded rows, days of them until retention, are never
-- read. Capped so that a producer inventing task names cannot make this reading unbounded.
SELECT j.queue,
       j.task,
       CASE WHEN j.state = 'queued' AND j.run_at > now() THEN 'scheduled' ELSE j.state::text END AS state,
       count(*)::bigint AS jobs,
       extract(epoch FROM now() - min(j.run_at))::float8 AS oldest_age
FROM notifyq.jobs AS j
WHERE j.state IN ('queued', 'running', 'failed')
GROUP BY 1, 2, 3
ORDER BY jobs DESC
LIMIT 10000;


-- name: health_stats :one
-- What vacuum is up against: dead rows in the jobs table, and the oldest open transaction in this
-- database (a long one holds back cleanup, so dead rows pile up and claims slow down); and how full
-- the NOTIFY queue is. One statement, to keep an idle daemon quiet.
SELECT pg_notification_queue_usage()::float8 AS usage,
       coalesce((SELECT s.n_dead_tup FROM pg_stat_user_tables AS s
                 WHERE s.schemaname = 'notifyq' AND s.relname = 'jobs'), 0)::bigint AS dead_tuples,
       coalesce((SELECT extract(epoch FROM now() - min(a.xact_start)) FROM pg_stat_activity AS a
                 WHERE a.datname = current_database() AND a.xact_start IS NOT NULL
                   AND a.pid <> pg_backend_pid()), 0)::float8 AS oldest_xact_age;
