-- notifyq 0005: whether a crashed job had started, as far as the database can know; a job whose crash
-- left that unclear is forgiven once, then starts alone.
--
-- The attempt is counted when a job starts (begin_jobs), but one statement begins a batch of jobs and
-- their handlers then start one after another on the daemon's event loop. A handler that ended the
-- process before yielding (os._exit, a crashing extension) took the rest of its batch down before their
-- handlers ran, and rescue could not tell them from it: all lost the attempt, and with max_attempts = 1
-- all failed.
--
-- `workers.entered_through`: each daemon records, with its next begin statement and its heartbeat, the
-- start time (`started_at`) up to which every job it began has had its handler called (or was given
-- back). Rescue counts the attempt of a job started at or before its worker's mark: it ran. A job started
-- after the mark may never have run: the first time, its attempt is given back and `unclear_crashes`
-- counts it; the daemon then begins that job alone, holding every other start until the mark covers it,
-- so its next unclear crash is its own, and counts (a job that kills its worker cannot retry for ever).
ALTER TABLE notifyq.workers ADD COLUMN entered_through timestamptz;

ALTER TABLE notifyq.jobs
    ADD COLUMN unclear_crashes integer NOT NULL DEFAULT 0
        CONSTRAINT jobs_unclear_crashes_nonnegative CHECK (unclear_crashes >= 0);

-- Backstops for what an UPDATE with the table's rights could still write (the producer role has no
-- UPDATE; an owner or an operator's script does): attempts beyond max_attempts (a queued job with no
-- attempt left, which no claim would ever finish), and times nobody can compute with. NOT VALID: no
-- scan of an existing table and no lock beyond the moment; every new row and every update is checked.
ALTER TABLE notifyq.jobs
    ADD CONSTRAINT jobs_attempts_within_max CHECK (attempts <= max_attempts) NOT VALID,
    ADD CONSTRAINT jobs_times_finite CHECK (
        isfinite(created_at) AND isfinite(started_at) AND isfinite(finished_at)) NOT VALID;

-- The guard of 0004, unchanged but for one line: a producer's insert cannot set unclear_crashes (a
-- value there would make a job start alone, or take away the forgiveness of its first unclear crash).
CREATE OR REPLACE FUNCTION notifyq.jobs_guard() RETURNS trigger
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
    NEW.unclear_crashes := 0;
    NEW.finished_at := NULL;
    NEW.result := NULL;
    NEW.last_error := NULL;
    RETURN NEW;
END
$$;
