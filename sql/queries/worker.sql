-- Statements the daemon runs. Loaded once by notifyq/queries.py; every value is a bound parameter.
-- The SQL text is fixed, so asyncpg prepares each statement once per connection and reuses it.

-- name: claim_runnable :fragment
-- Which rows a claim may take, besides their queue: queued, of a task this daemon has a handler for ($2),
-- and due.
(j.state = 'queued'
  AND j.task = ANY($2::text[])
  AND j.run_at <= notifyq.now())

-- name: claim_order :fragment
-- The claim order within one queue (jobs_claim_idx matches it exactly), $4 at most, skipping rows another
-- daemon is claiming right now.
ORDER BY j.priority DESC, j.run_at, j.id
LIMIT $4
FOR NO KEY UPDATE SKIP LOCKED

-- name: claim_bytes :fragment
-- A row's payload size for the claim's byte budget: its stored size when stored uncompressed (close to
-- its text, read from the header alone), else the text's length: a compressed payload may be stored far
-- below what the claim sends and the daemon holds (1 MiB of zeros is 12 KB on disk).
CASE WHEN pg_column_compression(j.payload) IS NULL THEN pg_column_size(j.payload)
     ELSE octet_length(j.payload::text) END

-- name: claim_lease :fragment
-- What both claims do to the rows they picked (a CTE named `picked`): running under a fresh lease token,
-- reserved for this daemon but not started (started_at NULL), the task's max_attempts override when
-- there is one. The attempt is counted by begin_jobs, just before the handler runs, so that a job
-- claimed into the prefetch buffer and lost with its daemon loses no attempt. $2 tasks, $3 max_attempts
-- overrides (NULL = keep the row's), $5 lease seconds, $6 worker id.
-- Times come back clamped to what every driver decodes (Python's datetime: years 1 to 9999) and the
-- payload as its bytes, unconverted (convert_to the database's own encoding): one row the driver cannot
-- decode (a run_at before year 1, bytes a SQL_ASCII database holds that are not UTF-8, which Postgres
-- itself refuses to send as text) must not fail the claim of all the others.
UPDATE notifyq.jobs AS j
SET state = 'running',
    max_attempts = coalesce(
        -- The producer's value when it gave one (NULL: it did not), else the task's, else the default;
        -- written into the row, which then keeps it from its first claim on.
        j.max_attempts,
        (SELECT o.max_attempts FROM unnest($2::text[], $3::int[]) AS o(task, max_attempts)
         WHERE o.task = j.task),
        notifyq.default_max_attempts()),
    lease_token = gen_random_uuid(),
    leased_until = notifyq.now() + make_interval(secs => $5::float8),
    worker_id = $6::uuid,
    started_at = NULL
-- By id through the primary key, not a join with `picked`: a join let the planner hash `picked` and
-- read the whole table to probe it whenever its statistics made that look cheaper (see docs/design.md).
WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
RETURNING j.id, j.queue, j.task,
          convert_to(j.payload::text, pg_catalog.getdatabaseencoding()) AS payload, j.priority,
          least(greatest(j.run_at, '0001-01-02 UTC'), '9999-12-30 UTC') AS run_at,
          j.attempts + 1 AS attempts, j.max_attempts, j.unclear_crashes, j.snoozes,
          least(greatest(j.created_at, '0001-01-02 UTC'), '9999-12-30 UTC') AS created_at, j.lease_token,
          greatest(extract(epoch FROM notifyq.now() - j.run_at), 0)::float8 AS waited;

-- name: begin_jobs :many
-- Start buffered jobs: count the attempt and stamp started_at, right before their handlers run, only
-- while this daemon's lease is current and not yet expired (a daemon frozen past its lease must not
-- start jobs another daemon may have run meanwhile). Returns the ids that may start, with the start
-- time. A row another session holds locked is skipped (not started, given back), never waited for: see
-- record_outcomes. The same statement moves this worker's mark, entered_through: every job it started
-- at or before that time has had its handler called (rescue_expired reads it).
-- $1 ids, $2 lease tokens, $3 worker id, $4 the mark (NULL: unchanged).
WITH marked AS (
    UPDATE notifyq.workers AS w
    SET entered_through = greatest(w.entered_through, $4::timestamptz)
    WHERE w.id = $3::uuid AND $4::timestamptz IS NOT NULL
), o AS (
    SELECT * FROM unnest($1::bigint[], $2::uuid[]) AS o(id, token)
), mine AS (
    SELECT j.id
    FROM /* include: lock_batch */
    WHERE j.started_at IS NULL
      AND j.leased_until > notifyq.now()
)
UPDATE notifyq.jobs AS j
SET attempts = j.attempts + 1,
    started_at = notifyq.now()
WHERE j.id = ANY(ARRAY(SELECT id FROM mine))
RETURNING j.id, j.started_at;

-- name: mark_entered :exec
-- begin_jobs's move of the mark alone, once a job begun alone is under way: $1 worker id, $2 the mark.
UPDATE notifyq.workers AS w
SET entered_through = greatest(w.entered_through, $2::timestamptz)
WHERE w.id = $1::uuid;

-- name: claim_jobs :many
-- $1 queues, $2 tasks with a handler, $3 per-task max_attempts override (NULL = keep the row's),
-- $4 how many (the free slots), $5 lease seconds, $6 worker id, and per queue of $1 where the previous
-- claim stopped: $7 priority, $8 run_at, $9 id (NULLs: scan from the start); $10 the byte budget: rows
-- are taken while the payloads before them come to less, so a claim that reaches 1 MiB payloads after a
-- drain of small ones takes a few of them, not `$4` (rows locked beyond it stay queued; their locks end
-- with the statement).
-- One index scan per served queue (jobs_claim_idx matches queue + ORDER BY exactly; `queue = ANY(...)`
-- would make Postgres 15 read and sort every runnable row instead), then the best $4 across queues.
-- With several queues, rows beyond the best $4 stay locked only until this statement commits.
-- Starting after the previous claim's last row skips the index entries of the rows claimed since the
-- last vacuum, which every scan from the start walks again: a 1,000,000-job backlog drained at 43% of
-- the 20,000-job rate that way. The first branch continues the same priority after that row; the second,
-- read only when the first falls short, takes the lower priorities. Rows that sort before the position
-- (a higher priority, a backdated run_at) are found by the claimer's scan from the start, done after
-- a short claim and at least once a second.
WITH locked AS (
    SELECT c.id, c.priority, c.run_at, c.bytes
    FROM unnest($1::text[], $7::int[], $8::timestamptz[], $9::bigint[])
        AS q(name, after_priority, after_run_at, after_id)
    CROSS JOIN LATERAL (
        SELECT * FROM (
            SELECT j.id, j.priority, j.run_at, /* include: claim_bytes */ AS bytes
            FROM notifyq.jobs AS j
            WHERE j.queue = q.name
              AND /* include: claim_runnable */
              AND j.priority = q.after_priority
              AND (j.run_at, j.id) > (q.after_run_at, q.after_id)
            /* include: claim_order */
        ) AS same_priority
        UNION ALL
        SELECT * FROM (
            SELECT j.id, j.priority, j.run_at, /* include: claim_bytes */ AS bytes
            FROM notifyq.jobs AS j
            WHERE j.queue = q.name
              AND /* include: claim_runnable */
              AND (q.after_priority IS NULL OR j.priority < q.after_priority)
            /* include: claim_order */
        ) AS from_start_or_lower
        LIMIT $4
    ) AS c
    ORDER BY c.priority DESC, c.run_at, c.id
    LIMIT $4
), picked AS (
    -- Within the byte budget ($10): every row whose payloads before it come to less (the first always).
    SELECT l.id FROM (
        SELECT l.id, sum(l.bytes) OVER (ORDER BY l.priority DESC, l.run_at, l.id) - l.bytes AS before
        FROM locked AS l
    ) AS l
    WHERE l.before < $10::bigint
)
/* include: claim_lease */;

-- name: claim_head :many
-- claim_jobs for the commonest case, one queue claimed from its head: the same rows in the same order,
-- in a statement Postgres plans in two thirds of the time. It is the claim after every wake-up from
-- idle, so its cost is part of the wake latency: round trip 0.74 ms against 1.26 here (EXPLAIN ANALYZE:
-- planning 0.24 ms against 0.36, execution 0.17 against 0.23).
-- $1 the queue, then as claim_jobs: $2 tasks, $3 max_attempts overrides, $4 how many, $5 lease seconds,
-- $6 worker id, $7 the byte budget.
WITH locked AS (
    SELECT j.id, j.priority, j.run_at, /* include: claim_bytes */ AS bytes
    FROM notifyq.jobs AS j
    WHERE j.queue = $1::text
      AND /* include: claim_runnable */
    /* include: claim_order */
), picked AS (
    SELECT l.id FROM (
        SELECT l.id, sum(l.bytes) OVER (ORDER BY l.priority DESC, l.run_at, l.id) - l.bytes AS before
        FROM locked AS l
    ) AS l
    WHERE l.before < $7::bigint
)
/* include: claim_lease */;

-- name: record_outcomes :many
-- One fenced statement per batch: a row is written only by the holder of its current lease.
-- $1 ids, $2 lease tokens, $3 new states, $4 delay seconds (queued only), $5 attempts to give back
-- (1 for a snooze, a shutdown release or a job given back unstarted), $6 errors, $7 results as JSON
-- text, $8 1 for a snooze (counted in `snoozes`), else 0. Only a started row has an attempt to give back: a job given back from the prefetch buffer
-- usually never had one counted.
-- Rows are locked first with SKIP LOCKED: a row another session holds (an operator's open transaction,
-- a report's SELECT ... FOR UPDATE) must stall its own outcome only, not the whole batch, whose leases
-- would meanwhile expire and be rescued. Returns (id, busy): busy ids were skipped while still this
-- lease's and are written again later; ids not returned lost their lease.
WITH o AS (
    SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::float8[], $5::int[], $6::text[], $7::text[],
                         $8::int[])
        AS o(id, token, state, delay, refund, error, result, snoozed)
), mine AS (
    SELECT o.*
    FROM /* include: lock_batch */
), written AS (
    UPDATE notifyq.jobs AS j
    SET state = m.state::notifyq.job_state,
        attempts = j.attempts - CASE WHEN j.started_at IS NULL THEN 0 ELSE m.refund END,
        snoozes = j.snoozes + m.snoozed,
        run_at = CASE WHEN m.state = 'queued' THEN notifyq.now() + make_interval(secs => m.delay) ELSE j.run_at END,
        last_error = coalesce(m.error, j.last_error),
        result = m.result::jsonb,
        finished_at = CASE WHEN m.state = 'queued' THEN NULL ELSE notifyq.now() END,
        lease_token = NULL,
        leased_until = NULL,
        worker_id = NULL
    -- `mine` holds each id once: a batch may hold one id twice, under its current token and a stale
    -- one, and only the current one matched. The ids are named again, hidden in a subquery, for the
    -- primary key: joined to `mine` alone, a custom plan that knew 300 ids hashed them against a
    -- sequential scan of the table (test_plan_shapes).
    FROM mine AS m
    WHERE j.id = m.id AND j.id = ANY(ARRAY(SELECT id FROM mine))
    RETURNING j.id
)
SELECT id, false AS busy FROM written
UNION ALL
/* include: busy_rows */;

-- name: complete_succeeded :many
-- The common case of record_outcomes in fewer parameters: successes with no result to store.
-- $1 ids, $2 lease tokens. Returns (id, busy) as record_outcomes does.
WITH o AS (
    SELECT * FROM unnest($1::bigint[], $2::uuid[]) AS o(id, token)
), mine AS (
    SELECT j.id
    FROM /* include: lock_batch */
), written AS (
    UPDATE notifyq.jobs AS j
    SET state = 'succeeded',
        result = NULL,
        finished_at = notifyq.now(),
        lease_token = NULL,
        leased_until = NULL,
        worker_id = NULL
    WHERE j.id = ANY(ARRAY(SELECT id FROM mine))
    RETURNING j.id
)
SELECT id, false AS busy FROM written
UNION ALL
/* include: busy_rows */;

-- name: lock_batch :fragment
-- The rows of the batch `o` (id, token) still under these leases, locked. Each is looked up alone, by id
-- through the primary key: the lateral subquery with a row lock cannot be turned into a join, so its
-- cost is one lookup per batch row whatever the statistics say. As a join, the planner chose by its
-- estimates: given the ids it preferred reading the whole table, and once ANALYZE had seen nothing
-- running it expected one row where a batch has 500 and compared every row with every other (a nested
-- loop over the batch: 250,000 comparisons, the drain at half speed; docs/design.md, "Plans"). The
-- state is not tested: a lease token and a leased_until imply 'running' (jobs_lease_only_when_running;
-- the token alone does not: a row failed by hand may keep it). A row another session holds locked is
-- skipped, never waited for (see record_outcomes); no lock is waited for, so their order is free.
o CROSS JOIN LATERAL (
    SELECT j.id, j.started_at, j.leased_until
    FROM notifyq.jobs AS j
    WHERE j.id = o.id AND j.lease_token = o.token AND j.leased_until IS NOT NULL
    FOR NO KEY UPDATE OF j SKIP LOCKED
) AS j

-- name: busy_rows :fragment
-- The rows of `o` (id, token) that are still this lease's in the statement's snapshot but were not
-- locked into `mine`: another session holds them. Neither written nor lost; tried again later. Looked
-- up alone like lock_batch's (OFFSET 0 keeps the subquery from being turned into a join).
SELECT o.id, true
FROM o CROSS JOIN LATERAL (
    SELECT FROM notifyq.jobs AS j
    WHERE j.id = o.id AND j.lease_token = o.token AND j.leased_until IS NOT NULL
    OFFSET 0
) AS still
WHERE o.id NOT IN (SELECT id FROM mine)

-- name: extend_leases :many
-- The heartbeat: one statement extends every lease this daemon holds and refreshes its workers row
-- (re-creating it if maintenance pruned it while this process was stopped). Returns (id, busy) as
-- record_outcomes does: a lease another session's lock keeps from being extended is not lost, and the
-- daemon fences that one job itself if it stays unconfirmed for most of a lease.
-- $1 ids, $2 tokens, $3 lease seconds, $4 worker id, $5 hostname, $6 pid, $7 queues, $8 tasks,
-- $9 concurrency, $10 the entered_through mark (see begin_jobs; NULL: unchanged), $11 the code
-- schedules this daemon declares (for `notifyq schedules prune`).
WITH seen AS (
    INSERT INTO notifyq.workers AS w (id, hostname, pid, queues, tasks, concurrency, running, lease_seconds,
                                      entered_through, schedules)
    VALUES ($4::uuid, $5::text, $6::int, $7::text[], $8::text[], $9::int, cardinality($1::bigint[]),
            $3::float8, $10::timestamptz, $11::text[])
    ON CONFLICT (id) DO UPDATE SET last_seen = notifyq.now(), running = excluded.running,
        entered_through = greatest(w.entered_through, excluded.entered_through)
), o AS (
    SELECT * FROM unnest($1::bigint[], $2::uuid[]) AS h(id, token)
), mine AS (
    SELECT j.id
    FROM /* include: lock_batch */
), extended AS (
    UPDATE notifyq.jobs AS j
    SET leased_until = notifyq.now() + make_interval(secs => $3::float8)
    WHERE j.id = ANY(ARRAY(SELECT id FROM mine))
    RETURNING j.id
)
SELECT id, false AS busy FROM extended
UNION ALL
/* include: busy_rows */;

-- name: unregister_worker :exec
DELETE FROM notifyq.workers WHERE id = $1::uuid;

-- name: rescue_expired :many
-- Requeue (or fail, when attempts are spent) jobs whose lease ran out: their daemon crashed, froze or
-- lost the database. A job that never started (still reserved in a prefetch buffer: started_at NULL)
-- goes back exactly as it was, attempt and error untouched: it took no part in the crash.
-- A started job ran if it started at or before its worker's entered_through mark (begin_jobs): its
-- attempt counts, like any failed attempt. One started after the mark may never have run (its batch
-- was begun, then a handler ended the process before the others were called; or the mark had not been
-- written yet): the first time, its attempt is given back, it is queued (never failed) and
-- unclear_crashes counts it. The daemon then begins that job alone and holds every other start until
-- the mark covers it (worker/starter.py), so its next unclear crash is its own: that one counts, and
-- fails the job when its attempts are spent.
-- $1 how many at most; $2 ids and $3 tokens of the leases this daemon holds itself: not rescued, since
-- this daemon is alive and its heartbeat extends them or fences them (after a pause, rescue would
-- otherwise throw away outcomes already in hand). SKIP LOCKED lets every daemon run this at once.
WITH judged AS (
    SELECT j.id,
           j.started_at IS NOT NULL AS started,
           j.started_at > coalesce(w.entered_through, '-infinity') AS unclear,
           j.started_at > coalesce(w.entered_through, '-infinity') AND j.unclear_crashes = 0 AS forgiven
    FROM notifyq.jobs AS j
    LEFT JOIN notifyq.workers AS w ON w.id = j.worker_id
    WHERE j.state = 'running' AND j.leased_until < notifyq.now()
      -- A hashed list, not NOT EXISTS: that became a nested loop over the held leases for each row.
      AND (j.id, j.lease_token) NOT IN (SELECT * FROM unnest($2::bigint[], $3::uuid[]))
    ORDER BY j.id
    LIMIT $1
    FOR NO KEY UPDATE OF j SKIP LOCKED
)
UPDATE notifyq.jobs AS j
SET state = CASE WHEN judged.started AND NOT judged.forgiven AND j.attempts >= j.max_attempts THEN 'failed'
                 ELSE 'queued' END::notifyq.job_state,
    attempts = j.attempts - CASE WHEN judged.forgiven THEN 1 ELSE 0 END,
    unclear_crashes = j.unclear_crashes + CASE WHEN judged.unclear THEN 1 ELSE 0 END,
    last_error = CASE WHEN NOT judged.started THEN j.last_error
                      ELSE 'LeaseExpired: worker ' || coalesce(j.worker_id::text, 'unknown')
                           || ' stopped heartbeating during attempt ' || j.attempts
                           || CASE WHEN judged.forgiven
                                   THEN ' (not counted: it may never have started; it starts alone from now on)'
                                   ELSE '' END END,
    finished_at = CASE WHEN judged.started AND NOT judged.forgiven AND j.attempts >= j.max_attempts
                       THEN notifyq.now() END,
    run_at = CASE WHEN judged.started THEN notifyq.now() ELSE j.run_at END,
    lease_token = NULL,
    leased_until = NULL,
    worker_id = NULL
FROM judged
WHERE j.id = judged.id AND j.id = ANY(ARRAY(SELECT id FROM judged))
RETURNING j.id, j.queue, j.task, j.state::text AS state, j.attempts, judged.started, judged.forgiven;

-- name: prune_workers :exec
-- Forget daemons silent for ten of their leases, and never sooner than $1 seconds.
DELETE FROM notifyq.workers
WHERE last_seen < notifyq.now() - make_interval(secs => greatest(10 * lease_seconds, $1::float8));

-- name: next_run_delay :one
-- Seconds until the earliest queued job this daemon could run; NULL when there is none. Per queue it
-- walks jobs_schedule_idx from the earliest run_at and stops at the first task it has a handler for.
SELECT extract(epoch FROM min(n.run_at) - notifyq.now())::float8 AS delay
FROM unnest($1::text[]) AS q(name)
CROSS JOIN LATERAL (
    SELECT j.run_at
    FROM notifyq.jobs AS j
    WHERE j.state = 'queued' AND j.queue = q.name AND j.task = ANY($2::text[])
      AND j.run_at > '-infinity'::timestamptz  -- always true; names jobs_schedule_idx's predicate
    ORDER BY j.run_at
    LIMIT 1
) AS n;

-- name: jobs_without_handler :many
-- Queued jobs in the served queues whose task no handler in $2 knows.
SELECT j.queue, j.task, count(*)::bigint AS jobs
FROM notifyq.jobs AS j
WHERE j.state = 'queued' AND j.queue = ANY($1::text[]) AND NOT (j.task = ANY($2::text[]))
GROUP BY j.queue, j.task
ORDER BY jobs DESC, j.queue, j.task
LIMIT $3;

-- name: prune_finished :one
-- Retention: delete up to $2 finished jobs older than $1 seconds; bounded so it never holds long locks.
WITH doomed AS (
    SELECT j.id FROM notifyq.jobs AS j
    WHERE j.state IN ('succeeded', 'failed', 'cancelled')
      AND j.finished_at < notifyq.now() - make_interval(secs => $1::float8)
    ORDER BY j.finished_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM notifyq.jobs AS j WHERE j.id = ANY(ARRAY(SELECT id FROM doomed)) RETURNING 1
)
SELECT count(*)::bigint AS deleted FROM gone;

-- name: rollback :exec
-- Returning a pooled connection that was left inside a transaction (a cancelled statement).
ROLLBACK;
