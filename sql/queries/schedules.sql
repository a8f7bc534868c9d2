-- Periodic jobs (migration 0007): what the daemons' scheduler and `notifyq schedules` run.

-- name: schedules_for_pass :many
-- The schedules after name $1, $2 at most, in name order (a pass reads them page by page, however many
-- there are), with the database's clock (the one every tick is measured against). Disabled ones too, so
-- that a daemon sees which of its code's schedules are gone (pruned while it was paused) and writes them
-- back.
SELECT notifyq.now() AS now, s.name, s.cron, s.timezone, s.since, s.last_tick, s.next_tick, s.updated_at,
       extract(epoch FROM s.backfill)::float8 AS backfill_seconds, s.skip_overlap, s.error, s.enabled,
       s.payload_bytes
FROM notifyq.schedules AS s
WHERE s.name > $1::text
ORDER BY s.name
LIMIT $2::int;

-- name: enqueue_ticks :one
-- Exactly one job per tick with no leader: move the schedule's last_tick forward to $4, only while the row
-- is as this daemon read it ($2 last_tick, $3 updated_at: a competing daemon that got there first, or a
-- writer who changed the schedule meanwhile, makes this a no-op), and insert the jobs of ticks $6 (with
-- $7: backfilled) from the row that UPDATE returned. A competitor finds the row locked and skips it, or,
-- once the winner committed, finds it changed: either way it inserts nothing. The unique key on (schedule, schedule_tick)
-- is the second guard. With skip_overlap, a run of this schedule still queued or running means the ticks
-- are skipped (last_tick still moves). $5 the next tick after these, for operators; $1 the name.
-- A row locked by someone else (another daemon making this tick, or an operator's open transaction) is
-- skipped, not waited on: one held row must not stall every other schedule behind it.
-- Returns whether the row moved, whether it was locked, whether the ticks were skipped, and the jobs
-- made (of them, the backfilled ones).
WITH locked AS (
    SELECT s.name FROM notifyq.schedules AS s WHERE s.name = $1::text FOR NO KEY UPDATE SKIP LOCKED
), advanced AS (
    UPDATE notifyq.schedules AS s
    SET last_tick = $4::timestamptz, next_tick = $5::timestamptz, error = NULL
    WHERE s.name = $1::text
      AND EXISTS (SELECT 1 FROM locked)  -- an InitPlan, not a join: the lock taken, or nothing to do
      AND s.enabled
      AND s.last_tick IS NOT DISTINCT FROM $2::timestamptz
      AND s.updated_at = $3::timestamptz
      AND (s.last_tick IS NULL OR s.last_tick < $4::timestamptz)
    RETURNING s.name, s.queue, s.task, s.payload, s.priority, s.max_attempts, s.skip_overlap
), busy AS (
    SELECT EXISTS (
        SELECT 1 FROM advanced AS a JOIN notifyq.jobs AS j ON j.schedule = a.name
        WHERE a.skip_overlap AND j.state IN ('queued', 'running')
    ) AS yes
), made AS (
    INSERT INTO notifyq.jobs AS j (queue, task, payload, priority, max_attempts, run_at, schedule, schedule_tick,
                                   backfilled)
    -- The one advanced row is read by scalar subqueries, not joined: a join to the ticks would be a nested
    -- loop over an array scan, which the plan tests refuse, and the row is one at most.
    SELECT (SELECT a.queue FROM advanced AS a), (SELECT a.task FROM advanced AS a),
           (SELECT a.payload FROM advanced AS a), (SELECT a.priority FROM advanced AS a),
           (SELECT a.max_attempts FROM advanced AS a), t.tick, $1::text, t.tick, t.backfilled
    FROM unnest($6::timestamptz[], $7::boolean[]) AS t(tick, backfilled)
    WHERE EXISTS (SELECT 1 FROM advanced) AND NOT (SELECT b.yes FROM busy AS b)
    ON CONFLICT (schedule, schedule_tick) WHERE schedule IS NOT NULL DO NOTHING
    RETURNING j.backfilled
)
SELECT EXISTS (SELECT 1 FROM advanced) AS advanced,
       -- Held by someone else: there is a row, and this statement could not lock it (a deleted one is not).
       NOT EXISTS (SELECT 1 FROM locked)
           AND EXISTS (SELECT 1 FROM notifyq.schedules AS s WHERE s.name = $1::text) AS locked,
       (SELECT b.yes FROM busy AS b) AS skipped,
       (SELECT count(*) FROM made)::int AS made,
       (SELECT count(*) FILTER (WHERE m.backfilled) FROM made AS m)::int AS made_backfilled;

-- name: set_next_tick :exec
-- Nothing due: record the next tick for operators (only when it changed, so an idle pass writes nothing).
-- Like every write of the scheduler's, it skips a row someone else holds rather than wait on it.
WITH locked AS (
    SELECT s.name FROM notifyq.schedules AS s WHERE s.name = $1::text FOR NO KEY UPDATE SKIP LOCKED
)
UPDATE notifyq.schedules AS s
SET next_tick = $2::timestamptz, error = NULL
WHERE s.name = $1::text AND s.updated_at = $3::timestamptz
  AND EXISTS (SELECT 1 FROM locked)
  AND (s.next_tick IS DISTINCT FROM $2::timestamptz OR s.error IS NOT NULL);

-- name: set_schedule_error :exec
-- The daemons cannot compute this schedule's ticks ($2 says why): shown on the row until it is fixed.
WITH locked AS (
    SELECT s.name FROM notifyq.schedules AS s WHERE s.name = $1::text FOR NO KEY UPDATE SKIP LOCKED
)
UPDATE notifyq.schedules AS s
SET error = $2::text, next_tick = NULL
WHERE s.name = $1::text AND s.updated_at = $3::timestamptz AND s.error IS DISTINCT FROM $2::text
  AND EXISTS (SELECT 1 FROM locked);

-- name: local_lock_timeout :exec
-- Inside a transaction: how long its statements may wait on a lock ($1, such as '500ms').
SELECT set_config('lock_timeout', $1::text, true);

-- name: upsert_code_schedules :one
-- The schedules this daemon's code declares (@registry.periodic), written by its scheduler before its
-- first pass, and again for any found gone. A row that already holds the same definition is left alone
-- (no lock, no write, no NOTIFY); `enabled` is never touched, so a schedule an operator disabled stays
-- disabled across deploys. A row that differs but is held locked by someone else is skipped, not waited
-- on (a daemon must not hang at start behind an operator's open transaction): returns how many were, to
-- be written at a later pass. (A name another transaction is inserting cannot be skipped so: the caller
-- bounds that wait with a lock_timeout.) A row written through notifyq.schedule() or by hand
-- (source 'sql') belongs to its writer: the code's definition of the same name is not applied to it.
WITH d AS (
    SELECT d.name, d.cron, d.timezone, d.queue, d.task, d.payload::jsonb AS payload, d.priority,
           d.max_attempts, make_interval(secs => d.backfill) AS backfill, d.skip_overlap
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[], $8::int[],
                $9::float8[], $10::boolean[])
        AS d(name, cron, timezone, queue, task, payload, priority, max_attempts, backfill, skip_overlap)
), stale AS (
    SELECT s.name FROM notifyq.schedules AS s JOIN d ON d.name = s.name
    WHERE s.source = 'code'
      AND (s.cron, s.timezone, s.queue, s.task, s.payload, s.priority, s.max_attempts, s.backfill, s.skip_overlap)
          IS DISTINCT FROM
          (d.cron, d.timezone, d.queue, d.task, d.payload, d.priority, d.max_attempts, d.backfill, d.skip_overlap)
), mine AS (
    SELECT s.name FROM notifyq.schedules AS s
    WHERE s.name = ANY(ARRAY(SELECT st.name FROM stale AS st))
    FOR NO KEY UPDATE SKIP LOCKED
), written AS (
    INSERT INTO notifyq.schedules AS s
        (name, cron, timezone, queue, task, payload, priority, max_attempts, backfill, skip_overlap, source)
    SELECT d.name, d.cron, d.timezone, d.queue, d.task, d.payload, d.priority, d.max_attempts, d.backfill,
           d.skip_overlap, 'code'
    FROM d
    WHERE d.name = ANY(ARRAY(SELECT m.name FROM mine AS m))
       OR NOT EXISTS (SELECT 1 FROM notifyq.schedules AS x WHERE x.name = d.name)
    ON CONFLICT ON CONSTRAINT schedules_pkey DO UPDATE
    SET cron = excluded.cron, timezone = excluded.timezone, queue = excluded.queue, task = excluded.task,
        payload = excluded.payload, priority = excluded.priority, max_attempts = excluded.max_attempts,
        backfill = excluded.backfill, skip_overlap = excluded.skip_overlap, source = 'code'
    WHERE s.source = 'code'
      AND (s.cron, s.timezone, s.queue, s.task, s.payload, s.priority, s.max_attempts, s.backfill, s.skip_overlap)
          IS DISTINCT FROM
          (excluded.cron, excluded.timezone, excluded.queue, excluded.task, excluded.payload, excluded.priority,
           excluded.max_attempts, excluded.backfill, excluded.skip_overlap)
    RETURNING s.name
)
SELECT ((SELECT count(*) FROM stale) - (SELECT count(*) FROM mine))::int AS held,
       (SELECT count(*) FROM written)::int AS written;

-- name: list_schedules :many
-- `notifyq schedules list|show`: every schedule ($1 NULL) or one by name, with its latest job.
SELECT s.name, s.cron, s.timezone, s.queue, s.task, s.payload::text AS payload, s.priority, s.max_attempts,
       extract(epoch FROM s.backfill)::float8 AS backfill_seconds, s.enabled, s.skip_overlap, s.source,
       s.since, s.last_tick, s.next_tick, s.error, s.created_at, s.updated_at,
       j.id AS last_job_id, j.state::text AS last_job_state
FROM notifyq.schedules AS s
LEFT JOIN LATERAL (
    -- The last tick's job, or a later run still queued or running (a triggered one has no tick).
    SELECT x.id, x.state FROM (
        (SELECT j.id, j.state FROM notifyq.jobs AS j
         WHERE j.schedule = s.name AND j.schedule_tick IS NOT NULL
         ORDER BY j.schedule_tick DESC LIMIT 1)
        UNION ALL
        (SELECT j.id, j.state FROM notifyq.jobs AS j
         WHERE j.schedule = s.name AND j.state IN ('queued', 'running')
         ORDER BY j.id DESC LIMIT 1)
    ) AS x
    ORDER BY x.id DESC LIMIT 1
) AS j ON true
WHERE $1::text IS NULL OR s.name = $1::text
ORDER BY s.name;

-- name: set_schedule_enabled :one
-- `notifyq schedules enable|disable NAME`. Re-enabling never backfills the ticks missed while disabled
-- (the guard moves `since` to now). Returns the name, or no row when there is no such schedule.
UPDATE notifyq.schedules AS s SET enabled = $2::boolean WHERE s.name = $1::text RETURNING s.name;

-- name: trigger_schedule :one
-- `notifyq schedules trigger NAME`: one job from the schedule now, outside its ticks (last_tick does
-- not move). It names its schedule, so it counts as a run for skip_overlap, but has no schedule_tick, so
-- it never takes the unique key of a tick falling at the same instant. Returns the job id, or no row
-- when there is no such schedule.
INSERT INTO notifyq.jobs (queue, task, payload, priority, max_attempts, run_at, schedule)
SELECT s.queue, s.task, s.payload, s.priority, s.max_attempts, notifyq.now(), s.name
FROM notifyq.schedules AS s
WHERE s.name = $1::text
RETURNING id;

-- name: prune_code_schedules :many
-- `notifyq schedules prune`: remove the code schedules that no live daemon declares. Refused (no row
-- deleted) while no daemon is alive at all, since then every code schedule would look stale.
DELETE FROM notifyq.schedules AS s
WHERE s.source = 'code'
  AND EXISTS (SELECT 1 FROM notifyq.workers AS w WHERE /* include: live_worker */)
  AND NOT EXISTS (
      SELECT 1 FROM notifyq.workers AS w
      WHERE /* include: live_worker */ AND s.name = ANY(w.schedules)
  )
RETURNING s.name;
