-- notifyq 0004: the producer's checks hold for UPDATE too; run_at stays within what every driver can
-- decode; a max_attempts the producer gave wins over the task's; NULL means the default in enqueue().
--
-- It locks notifyq.jobs (ACCESS EXCLUSIVE) for its whole transaction and reads every row once or twice (to
-- move rows already out of range, then to validate the new constraints against them): on a table of
-- millions of rows, run it when producers and daemons can wait some seconds.

-- == run_at: within what every driver decodes ===========================================================
-- isfinite() alone let in times no client could read back: a run_at before year 1 in UTC made the claim
-- that returned it fail (asyncpg decodes to Python's datetime, years 1 to 9999), a run_at in the year
-- 33,000 broke `notifyq jobs list`. The bounds keep a day's margin at each end of years 1 to 9999, so a
-- client that converts to its local time zone (offsets are under a day) stays inside them too. Functions,
-- so the guard, its message, the update trigger and the CHECK cannot drift apart; immutable SQL functions
-- are inlined into each of them, so they cost nothing.
CREATE FUNCTION notifyq.min_run_at() RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$SELECT '0001-01-02 00:00:00+00'::timestamptz$$;
CREATE FUNCTION notifyq.max_run_at() RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$SELECT '9999-12-31 00:00:00+00'::timestamptz$$;

-- Rows already outside the bounds move to the nearest one, rather than failing this migration: a job
-- backdated before year 1 still sorts first in its queue, one set for the year 33,000 still waits (it is
-- due on 9999-12-31). A lease made infinite by hand ends now, so that rescue takes its job back.
UPDATE notifyq.jobs
SET run_at = least(greatest(run_at, notifyq.min_run_at()), notifyq.max_run_at()),
    leased_until = CASE WHEN NOT isfinite(leased_until) THEN notifyq.now() ELSE leased_until END
WHERE run_at NOT BETWEEN notifyq.min_run_at() AND notifyq.max_run_at()
   OR NOT isfinite(leased_until);

-- The backstops for write paths that skip the guard triggers (session_replication_role = replica, a
-- trigger disabled by the owner). jobs_run_at_finite stays: jobs_schedule_idx's predicate relies on it
-- by name (migration 0003), and it is implied by the range anyway. One ALTER, so one validating scan.
ALTER TABLE notifyq.jobs
    ADD CONSTRAINT jobs_run_at_range CHECK (run_at BETWEEN notifyq.min_run_at() AND notifyq.max_run_at()),
    ADD CONSTRAINT jobs_leased_until_finite CHECK (isfinite(leased_until));

-- == max_attempts: the producer's value wins =============================================================
-- NULL now means "not given": the claim writes coalesce(the row's value, the task's override, the
-- default) (sql/queries/worker.sql, claim_lease), so the row holds the value in force from its first
-- claim on. Before, every row held a number (20 unless given) and a task's override replaced it at each
-- claim, so a producer's explicit max_attempts => 1 ran as often as the task said.
ALTER TABLE notifyq.jobs
    ALTER COLUMN max_attempts DROP DEFAULT,
    ALTER COLUMN max_attempts DROP NOT NULL;
-- A queued row holding the old default cannot tell "given as 20" from "not given"; under the old rule
-- the task's override replaced it at the next claim anyway, so NULL keeps exactly what it would have got.
-- Rows holding another value were given it (or had it written by a claim): they keep it.
UPDATE notifyq.jobs SET max_attempts = NULL
WHERE state = 'queued' AND max_attempts = notifyq.default_max_attempts();

-- == the guard: one function for INSERT and UPDATE ======================================================
-- The producer boundary of 0001 checked INSERT only: an UPDATE could store a 3 MB payload, an
-- unreadable run_at or an infinite lease. The same function now checks both, with the same messages.
-- Changing a job's lifecycle columns (state, attempts, leases) by UPDATE cannot be told apart from the
-- daemon's own updates here; the producer role of sql/roles/ has no UPDATE at all, which is what stops it.
--
-- SECURITY DEFINER only to read the id sequence, which a producer role has no right to see; the function
-- reads its own row and the sequence, and writes nothing but NEW's timestamps and outputs.
CREATE FUNCTION notifyq.jobs_guard() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.state IS DISTINCT FROM 'queued' THEN
            RAISE EXCEPTION 'notifyq.jobs.state: producers may only insert queued jobs (got %)', NEW.state
                USING ERRCODE = 'check_violation', COLUMN = 'state', CONSTRAINT = 'jobs_guard_state',
                      SCHEMA = 'notifyq', TABLE = 'jobs';
        END IF;
        IF NEW.lease_token IS NOT NULL OR NEW.leased_until IS NOT NULL OR NEW.worker_id IS NOT NULL THEN
            RAISE EXCEPTION 'notifyq.jobs.lease_token: producers may not insert a lease (lease_token, leased_until and worker_id must be NULL)'
                USING ERRCODE = 'check_violation', COLUMN = 'lease_token', CONSTRAINT = 'jobs_guard_lease',
                      SCHEMA = 'notifyq', TABLE = 'jobs';
        END IF;
        IF NEW.attempts IS DISTINCT FROM 0 THEN
            RAISE EXCEPTION 'notifyq.jobs.attempts: must be 0 on insert (got %)', NEW.attempts
                USING ERRCODE = 'check_violation', COLUMN = 'attempts', CONSTRAINT = 'jobs_guard_attempts',
                      SCHEMA = 'notifyq', TABLE = 'jobs';
        END IF;
        -- An id the identity did not hand out (OVERRIDING SYSTEM VALUE, or COPY, which always writes the
        -- id it is given) would be handed out later to another job, whose insert would then fail on the
        -- primary key. The identity calls nextval() for the row before this trigger runs, so its own ids
        -- are never beyond the sequence's last value; an explicit one at or below it can only clash
        -- with an existing row, which the primary key refuses at once.
        IF NEW.id > coalesce(pg_sequence_last_value('notifyq.jobs_id_seq'::regclass), 0) THEN
            RAISE EXCEPTION 'notifyq.jobs.id: must come from the identity sequence; an explicit id beyond it (got %) would collide with a later job',
                NEW.id
                USING ERRCODE = 'check_violation', COLUMN = 'id', CONSTRAINT = 'jobs_guard_id',
                      SCHEMA = 'notifyq', TABLE = 'jobs';
        END IF;
    END IF;
    IF NEW.task IS NULL OR char_length(NEW.task) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'notifyq.jobs.task: must be 1 to 200 characters (got %)',
            coalesce(char_length(NEW.task)::text || ' characters', 'NULL')
            USING ERRCODE = 'check_violation', COLUMN = 'task', CONSTRAINT = 'jobs_task_length',
                  SCHEMA = 'notifyq', TABLE = 'jobs';
    END IF;
    IF NEW.queue IS NULL OR NEW.queue !~ '^[a-z0-9][a-z0-9_.:-]{0,62}$' THEN
        RAISE EXCEPTION 'notifyq.jobs.queue: must match ^[a-z0-9][a-z0-9_.:-]{0,62}$ (lowercase letters, digits, _ . : -; at most 63 characters)'
            USING ERRCODE = 'check_violation', COLUMN = 'queue', CONSTRAINT = 'jobs_queue_format',
                  SCHEMA = 'notifyq', TABLE = 'jobs';
    END IF;
    IF NEW.priority IS NULL OR NEW.priority NOT BETWEEN -1000 AND 1000 THEN
        RAISE EXCEPTION 'notifyq.jobs.priority: must be between -1000 and 1000 (got %)',
            coalesce(NEW.priority::text, 'NULL')
            USING ERRCODE = 'check_violation', COLUMN = 'priority', CONSTRAINT = 'jobs_priority_range',
                  SCHEMA = 'notifyq', TABLE = 'jobs';
    END IF;
    -- 'infinity' is a valid timestamptz, but no job can be scheduled for it and no wait measured from it.
    IF NEW.run_at IS NULL OR NOT isfinite(NEW.run_at) THEN
        RAISE EXCEPTION 'notifyq.jobs.run_at: must be a finite time (got %)', coalesce(NEW.run_at::text, 'NULL')
            USING ERRCODE = 'check_violation', COLUMN = 'run_at', CONSTRAINT = 'jobs_run_at_finite',
                  SCHEMA = 'notifyq', TABLE = 'jobs';
    END IF;
    IF NEW.run_at NOT BETWEEN notifyq.min_run_at() AND notifyq.max_run_at() THEN
        RAISE EXCEPTION 'notifyq.jobs.run_at: must be between 0001-01-02 00:00:00+00 and 9999-12-31 00:00:00+00, the times every client can read back (got %)',
            NEW.run_at
            USING ERRCODE = 'check_violation', COLUMN = 'run_at', CONSTRAINT = 'jobs_run_at_range',
                  SCHEMA = 'notifyq', TABLE = 'jobs';
    END IF;
    -- NULL: not given; the claim uses the task's max_attempts, else notifyq.default_max_attempts().
    IF NEW.max_attempts NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'notifyq.jobs.max_attempts: must be between 1 and 1000, or NULL for the task''s or the default (got %)',
            NEW.max_attempts
            USING ERRCODE = 'check_violation', COLUMN = 'max_attempts',
                  CONSTRAINT = 'jobs_max_attempts_range', SCHEMA = 'notifyq', TABLE = 'jobs';
    END IF;
    -- 1 MiB of JSON text; octet_length of the text form is what a producer can reason about.
    IF NEW.payload IS NULL OR octet_length(NEW.payload::text) > 1048576 THEN
        RAISE EXCEPTION 'notifyq.jobs.payload: must be a JSON value of at most 1048576 bytes (got %)',
            coalesce(octet_length(NEW.payload::text)::text || ' bytes', 'NULL')
            USING ERRCODE = 'check_violation', COLUMN = 'payload', CONSTRAINT = 'jobs_payload_size',
                  SCHEMA = 'notifyq', TABLE = 'jobs';
    END IF;
    IF NEW.dedup_key IS NOT NULL AND char_length(NEW.dedup_key) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'notifyq.jobs.dedup_key: must be NULL or 1 to 200 characters (got % characters)',
            char_length(NEW.dedup_key)
            USING ERRCODE = 'check_violation', COLUMN = 'dedup_key',
                  CONSTRAINT = 'jobs_dedup_key_length', SCHEMA = 'notifyq', TABLE = 'jobs';
    END IF;
    IF TG_OP = 'UPDATE' THEN
        -- A lease that never ends can never be rescued: its job would stay running for ever.
        IF NOT isfinite(NEW.leased_until) THEN
            RAISE EXCEPTION 'notifyq.jobs.leased_until: must be NULL or a finite time (got %)', NEW.leased_until
                USING ERRCODE = 'check_violation', COLUMN = 'leased_until',
                      CONSTRAINT = 'jobs_leased_until_finite', SCHEMA = 'notifyq', TABLE = 'jobs';
        END IF;
        RETURN NEW;
    END IF;
    NEW.created_at := now();
    NEW.started_at := NULL;
    NEW.finished_at := NULL;
    NEW.result := NULL;
    NEW.last_error := NULL;
    RETURN NEW;
END
$$;

-- The same trigger name as before (operators and tests refer to it), now on the shared function.
DROP TRIGGER jobs_guard_insert ON notifyq.jobs;
DROP FUNCTION notifyq.jobs_guard_insert();
CREATE TRIGGER jobs_guard_insert BEFORE INSERT ON notifyq.jobs
    FOR EACH ROW EXECUTE FUNCTION notifyq.jobs_guard();

-- The daemon updates jobs all the time (claim, heartbeat, outcomes, rescue), and calling plpgsql on each
-- of those rows would cost it throughput, so the guard runs on UPDATE only when the WHEN clause (plain
-- SQL, evaluated in place) says a producer column changed. queue, task, priority and dedup_key are never
-- changed by the daemon. The daemon does write run_at (retries, rescue), max_attempts (its first claim)
-- and leased_until (every claim and heartbeat), so for those the clause tests the value against the
-- guard's limits and calls the guard only to refuse it with its message.
CREATE TRIGGER jobs_guard_update BEFORE UPDATE ON notifyq.jobs
    FOR EACH ROW
    WHEN (NEW.queue IS DISTINCT FROM OLD.queue
          OR NEW.task IS DISTINCT FROM OLD.task
          OR NEW.priority IS DISTINCT FROM OLD.priority
          OR NEW.dedup_key IS DISTINCT FROM OLD.dedup_key
          OR (NEW.run_at IS DISTINCT FROM OLD.run_at
              AND NEW.run_at NOT BETWEEN notifyq.min_run_at() AND notifyq.max_run_at())
          OR (NEW.max_attempts IS DISTINCT FROM OLD.max_attempts AND NEW.max_attempts NOT BETWEEN 1 AND 1000)
          OR NOT isfinite(NEW.leased_until))
    EXECUTE FUNCTION notifyq.jobs_guard();
-- The payload separately, by column list: comparing two payloads in the clause above would read both
-- (up to 1 MiB each, out of line) on every daemon update. UPDATE OF fires only for statements that name
-- payload in SET, which no daemon statement does.
CREATE TRIGGER jobs_guard_update_payload BEFORE UPDATE OF payload ON notifyq.jobs
    FOR EACH ROW EXECUTE FUNCTION notifyq.jobs_guard();

-- == enqueue() and enqueue_many(): NULL means the default, for every optional argument =================
-- 0001's enqueue() inserted priority as given, so priority => NULL was refused while enqueue_many()
-- took a NULL priority as 0; a client library that passes NULL for "not set" must get the same job
-- either way. max_attempts is now passed through as given: NULL leaves the choice to the claim.
CREATE OR REPLACE FUNCTION notifyq.enqueue(
    task          text,
    payload       jsonb DEFAULT '{}',
    queue         text DEFAULT 'default',
    run_at        timestamptz DEFAULT NULL,
    priority      integer DEFAULT 0,
    dedup_key     text DEFAULT NULL,
    max_attempts  integer DEFAULT NULL,
    run_in        interval DEFAULT NULL
) RETURNS bigint
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    new_id bigint;
BEGIN
    IF enqueue.run_at IS NOT NULL AND enqueue.run_in IS NOT NULL THEN
        RAISE EXCEPTION 'notifyq.enqueue: give run_at or run_in, not both'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOOP
        INSERT INTO notifyq.jobs AS j (task, payload, queue, run_at, priority, dedup_key, max_attempts)
        VALUES (
            enqueue.task,
            coalesce(enqueue.payload, '{}'),
            coalesce(enqueue.queue, 'default'),
            coalesce(enqueue.run_at, notifyq.now() + enqueue.run_in, notifyq.now()),
            coalesce(enqueue.priority, 0),
            enqueue.dedup_key,
            enqueue.max_attempts
        )
        ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL AND state IN ('queued', 'running')
        DO NOTHING
        RETURNING j.id INTO new_id;
        IF new_id IS NOT NULL THEN
            RETURN new_id;
        END IF;
        SELECT j.id INTO new_id FROM notifyq.jobs AS j
        WHERE j.dedup_key = enqueue.dedup_key AND j.state IN ('queued', 'running');
        IF new_id IS NOT NULL THEN
            RETURN new_id;
        END IF;
        -- The holder finished between our INSERT and SELECT: the key is free again, so try once more.
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION notifyq.enqueue_many(
    tasks         text[],
    payloads      jsonb[] DEFAULT NULL,
    queues        text[] DEFAULT NULL,
    run_ats       timestamptz[] DEFAULT NULL,
    priorities    integer[] DEFAULT NULL,
    dedup_keys    text[] DEFAULT NULL,
    max_attempts  integer[] DEFAULT NULL,
    run_ins       interval[] DEFAULT NULL
) RETURNS TABLE (pos bigint, id bigint)
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    n integer := coalesce(cardinality(tasks), 0);
    inserted bigint[];
    inserted_keys text[];
    found_pos bigint[];
    found_ids bigint[];
    missing bigint;
BEGIN
    IF (payloads IS NOT NULL AND cardinality(payloads) <> n)
        OR (queues IS NOT NULL AND cardinality(queues) <> n)
        OR (run_ats IS NOT NULL AND cardinality(run_ats) <> n)
        OR (priorities IS NOT NULL AND cardinality(priorities) <> n)
        OR (dedup_keys IS NOT NULL AND cardinality(dedup_keys) <> n)
        OR (max_attempts IS NOT NULL AND cardinality(max_attempts) <> n)
        OR (run_ins IS NOT NULL AND cardinality(run_ins) <> n) THEN
        RAISE EXCEPTION 'notifyq.enqueue_many: every array given must have as many elements as tasks (%)', n
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF n = 0 THEN
        RETURN;
    END IF;
    -- Rows go in in input order, so the identity hands out ascending ids in that order: sorting the
    -- ids returned puts them back in input order. A row whose dedup_key is held is skipped. unnest,
    -- not subscripts: subscripting a text[] walks it, which made a large batch quadratic.
    WITH added AS (
        INSERT INTO notifyq.jobs AS j (task, payload, queue, run_at, priority, dedup_key, max_attempts)
        SELECT r.task,
               coalesce(r.payload, '{}'),
               coalesce(r.queue, 'default'),
               CASE
                   WHEN r.run_at IS NOT NULL AND r.run_in IS NOT NULL THEN notifyq.enqueue_many_both_times(r.pos)
                   ELSE coalesce(r.run_at, notifyq.now() + r.run_in, notifyq.now())
               END,
               coalesce(r.priority, 0),
               r.dedup_key,
               r.max_attempts
        FROM unnest(tasks, payloads, queues, run_ats, priorities, dedup_keys, max_attempts, run_ins)
            WITH ORDINALITY AS r(task, payload, queue, run_at, priority, dedup_key, max_attempts, run_in, pos)
        ORDER BY r.pos
        ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL AND state IN ('queued', 'running')
        DO NOTHING
        RETURNING j.id, j.dedup_key
    )
    SELECT array_agg(a.id ORDER BY a.id), array_agg(a.dedup_key ORDER BY a.id)
    INTO inserted, inserted_keys
    FROM added AS a;

    IF cardinality(array_remove(coalesce(dedup_keys, '{}'), NULL)) = 0 THEN
        RETURN QUERY SELECT o.pos, o.id FROM unnest(inserted) WITH ORDINALITY AS o(id, pos);
        RETURN;
    END IF;
    -- Rows without a key were all inserted, in order; a row with a key gets whichever job holds the key
    -- now (this call's own insert, or the job that held it already).
    WITH given AS (
        SELECT d.key, d.pos FROM unnest(dedup_keys) WITH ORDINALITY AS d(key, pos)
    ), keyless AS (
        SELECT g.pos, row_number() OVER (ORDER BY g.pos) AS rank FROM given AS g WHERE g.key IS NULL
    ), plain AS (
        SELECT a.id, row_number() OVER (ORDER BY a.id) AS rank
        FROM unnest(inserted, inserted_keys) AS a(id, key) WHERE a.key IS NULL
    ), matched AS (
        SELECT k.pos, p.id FROM keyless AS k JOIN plain AS p ON p.rank = k.rank
        UNION ALL
        SELECT g.pos, j.id FROM given AS g
        JOIN notifyq.jobs AS j ON j.dedup_key = g.key AND j.state IN ('queued', 'running')
    )
    SELECT array_agg(m.pos ORDER BY m.pos), array_agg(m.id ORDER BY m.pos) INTO found_pos, found_ids
    FROM matched AS m;
    -- A holder that finished between the insert and the look-up freed its key: take those rows one by
    -- one through the single-row path, which retries until it has an id.
    FOR missing IN
        SELECT g.pos FROM generate_series(1, n) AS g(pos) WHERE NOT g.pos = ANY(coalesce(found_pos, '{}'))
    LOOP
        found_pos := found_pos || missing;
        found_ids := found_ids || notifyq.enqueue(tasks[missing], payloads[missing], queues[missing],
                                                  run_ats[missing], priorities[missing], dedup_keys[missing],
                                                  max_attempts[missing], run_ins[missing]);
    END LOOP;
    RETURN QUERY SELECT f.pos, f.id FROM unnest(found_pos, found_ids) AS f(pos, id) ORDER BY f.pos;
END
$$;
