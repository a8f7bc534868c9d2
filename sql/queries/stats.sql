-- Statements for the database gauges, `notifyq status` and `notifyq check`.

-- name: queue_stats :many
-- The daemons' gauges: jobs per queue, task and state ('scheduled' = queued with a future run_at), with
-- the age of the oldest run_at in each group, and when they were counted (one row of NULL groups when
-- there was nothing to count). The count (migration 0006) reads each state's partial index, never the
-- succeeded rows retention keeps, and one session counts for all: it is redone first when older than
-- $1 seconds, unless another session is counting at that moment.
SELECT c.queue, c.task, c.state, c.jobs, c.oldest_age, c.taken_at FROM notifyq.queue_counts($1::float8) AS c;

-- name: gauge_reading :one
-- Everything a daemon's gauges show, in one statement, so that an idle daemon's refresh costs one
-- transaction: queue_stats' groups (as JSON rows of [queue, task, state, jobs, oldest_age]) and when they
-- were counted, how many daemons are alive and the (queue, task) pairs they serve between them (for the
-- orphan gauge), and what vacuum is up against. $1 as queue_stats.
WITH c AS MATERIALIZED (
    SELECT * FROM notifyq.queue_counts($1::float8)
), live AS (
    SELECT w.queues, w.tasks FROM notifyq.workers AS w WHERE /* include: live_worker */
), served AS (
    SELECT DISTINCT q.queue, t.task
    FROM live AS l CROSS JOIN LATERAL unnest(l.queues) AS q(queue) CROSS JOIN LATERAL unnest(l.tasks) AS t(task)
)
SELECT (SELECT min(c.taken_at) FROM c) AS taken_at,
       (SELECT coalesce(json_agg(json_build_array(c.queue, c.task, c.state, c.jobs, c.oldest_age)), '[]')
        FROM c WHERE c.queue IS NOT NULL)::text AS counts,
       (SELECT count(*) FROM live)::int AS workers_alive,
       ARRAY(SELECT s.queue FROM served AS s ORDER BY s.queue, s.task) AS served_queues,
       ARRAY(SELECT s.task FROM served AS s ORDER BY s.queue, s.task) AS served_tasks,
       h.usage, h.dead_tuples, h.oldest_xact_age
-- What vacuum is up against: dead rows in the jobs table, and the oldest open transaction in this
-- database (a long one holds back cleanup, so dead rows pile up and claims slow down); and how full
-- the NOTIFY queue is.
FROM (
    SELECT pg_notification_queue_usage()::float8 AS usage,
           coalesce((SELECT s.n_dead_tup FROM pg_stat_user_tables AS s
                     WHERE s.schemaname = 'notifyq' AND s.relname = 'jobs'), 0)::bigint AS dead_tuples,
           coalesce((SELECT extract(epoch FROM now() - min(a.xact_start)) FROM pg_stat_activity AS a
                     WHERE a.datname = current_database() AND a.xact_start IS NOT NULL
                       AND a.pid <> pg_backend_pid()), 0)::float8 AS oldest_xact_age
) AS h;

-- name: queue_stats_now :many
-- The same groups counted now, writing nothing: for `notifyq status` and `check`, observers and
-- read-only nodes. The last row, of NULL groups, says when.
SELECT c.queue, c.task, c.state, c.jobs, extract(epoch FROM now() - c.oldest_run_at)::float8 AS oldest_age,
       now() AS taken_at
FROM notifyq.count_queues() AS c
UNION ALL
SELECT NULL, NULL, NULL, 0, NULL, now();
