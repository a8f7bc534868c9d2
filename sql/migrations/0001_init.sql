-- notifyq 0001: the jobs table, its guard, the gated wake-up trigger, the enqueue contract.
-- Applied by `notifyq migrate` inside one transaction under an advisory lock; runnable with psql too
-- (wrap it in BEGIN/COMMIT and record it in notifyq.schema_migrations yourself).

CREATE SCHEMA IF NOT EXISTS notifyq;

CREATE TYPE notifyq.job_state AS ENUM ('queued', 'running', 'succeeded', 'failed', 'cancelled');

-- The clock every worker statement uses. It is the database's now(), unless a session sets
-- notifyq.now (tests do, to move time without waiting). An inlinable SQL function, so it costs one
-- current_setting() per statement.
CREATE FUNCTION notifyq.now() RETURNS timestamptz
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$SELECT coalesce(nullif(pg_catalog.current_setting('notifyq.now', true), '')::timestamptz,
                         pg_catalog.now())$$;

-- One place for the default so the table and notifyq.enqueue() cannot drift apart.
CREATE FUNCTION notifyq.default_max_attempts() RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS 'SELECT 20';

CREATE TABLE notifyq.jobs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue         text NOT NULL DEFAULT 'default',
    task          text NOT NULL,
    payload       jsonb NOT NULL DEFAULT '{}',
    priority      integer NOT NULL DEFAULT 0,
    run_at        timestamptz NOT NULL DEFAULT notifyq.now(),
    state         notifyq.job_state NOT NULL DEFAULT 'queued',
    attempts      integer NOT NULL DEFAULT 0,
    max_attempts  integer NOT NULL DEFAULT notifyq.default_max_attempts(),
    lease_token   uuid,
    leased_until  timestamptz,
    worker_id     uuid,
    dedup_key     text,
    last_error    text,
    result        jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    CONSTRAINT jobs_queue_format CHECK (queue ~ '^[a-z0-9][a-z0-9_.:-]{0,62}$'),
    CONSTRAINT jobs_task_length CHECK (char_length(task) BETWEEN 1 AND 200),
    CONSTRAINT jobs_max_attempts_range CHECK (max_attempts BETWEEN 1 AND 1000),
    CONSTRAINT jobs_priority_range CHECK (priority BETWEEN -1000 AND 1000),
    CONSTRAINT jobs_run_at_finite CHECK (isfinite(run_at)),
    CONSTRAINT jobs_attempts_range CHECK (attempts >= 0),
    CONSTRAINT jobs_dedup_key_length CHECK (dedup_key IS NULL OR char_length(dedup_key) BETWEEN 1 AND 200),
    CONSTRAINT jobs_lease_only_when_running CHECK (
        (state = 'running') = (lease_token IS NOT NULL AND leased_until IS NOT NULL)
    )
-- Heartbeats rewrite leased_until many times per job; spare room on each page keeps those updates HOT.
) WITH (fillfactor = 80);

-- The claim path: only queued rows, in exactly the claim's ORDER BY within one queue.
CREATE INDEX jobs_claim_idx ON notifyq.jobs (queue, priority DESC, run_at, id) WHERE state = 'queued';
-- The earliest run_at per queue, for the daemon's timer: without it, finding the next scheduled job
-- reads every scheduled row of the queue on each idle turn.
CREATE INDEX jobs_schedule_idx ON notifyq.jobs (queue, run_at) WHERE state = 'queued';
-- Rescue and heartbeat scan running rows only. leased_until is deliberately not indexed: heartbeats
-- change it, and an index on it would make every heartbeat a non-HOT update.
CREATE INDEX jobs_running_idx ON notifyq.jobs (worker_id) WHERE state = 'running';
-- Failed jobs stay until retention and are what operators look at; counting them must not read the
-- succeeded ones.
CREATE INDEX jobs_failed_idx ON notifyq.jobs (queue) WHERE state = 'failed';
CREATE INDEX jobs_finished_idx ON notifyq.jobs (finished_at)
    WHERE state IN ('succeeded', 'failed', 'cancelled');
CREATE UNIQUE INDEX jobs_dedup_key_idx ON notifyq.jobs (dedup_key)
    WHERE dedup_key IS NOT NULL AND state IN ('queued', 'running');

CREATE TABLE notifyq.workers (
    id           uuid PRIMARY KEY,
    hostname     text NOT NULL,
    pid          integer NOT NULL,
    queues       text[] NOT NULL,
    tasks        text[] NOT NULL,
    concurrency  integer NOT NULL,
    running      integer NOT NULL DEFAULT 0,
    -- A worker counts as alive while last_seen is within two of its leases (it beats three times each).
    lease_seconds double precision NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    last_seen    timestamptz NOT NULL DEFAULT now()
);

-- The producer boundary. Runs before the CHECK constraints so that a bad row gets a message that names
-- the field and its limit; the constraints stay as the backstop for every other write path.
CREATE FUNCTION notifyq.jobs_guard_insert() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
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
    IF NEW.max_attempts IS NULL OR NEW.max_attempts NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'notifyq.jobs.max_attempts: must be between 1 and 1000 (got %)',
            coalesce(NEW.max_attempts::text, 'NULL')
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
    NEW.created_at := now();
    NEW.started_at := NULL;
    NEW.finished_at := NULL;
    NEW.result := NULL;
    NEW.last_error := NULL;
    RETURN NEW;
END
$$;

CREATE TRIGGER jobs_guard_insert BEFORE INSERT ON notifyq.jobs
    FOR EACH ROW EXECUTE FUNCTION notifyq.jobs_guard_insert();

-- Gated wake-up (DESIGN section 4). An idle daemon holds pg_advisory_lock_shared(K, hashtext(queue))
-- on its LISTEN connection; K = 7243 is notifyq's lock class. Failing to take the exclusive lock means
-- somebody is waiting, so we NOTIFY; taking it means nobody is, so we skip the NOTIFY and with it the
-- global commit-time lock that serializes notifying transactions.
--
-- A deferred constraint trigger checks at COMMIT, so the window in which a daemon can go idle unseen is
-- the commit itself rather than the rest of the producer's transaction. Each queue is checked once per
-- transaction (remembered in a transaction-local setting), which keeps a bulk insert cheap.
CREATE FUNCTION notifyq.jobs_wake() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    seen text := coalesce(current_setting('notifyq.woken', true), '');
    mark text := '|' || NEW.queue || '|';
BEGIN
    IF strpos(seen, mark) > 0 THEN
        RETURN NULL;
    END IF;
    PERFORM set_config('notifyq.woken', seen || mark, true);
    IF pg_try_advisory_lock(7243, hashtext(NEW.queue)) THEN
        PERFORM pg_advisory_unlock(7243, hashtext(NEW.queue));
    ELSE
        PERFORM pg_notify('notifyq', NEW.queue);
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER jobs_wake_insert AFTER INSERT ON notifyq.jobs
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION notifyq.jobs_wake();

-- Retries, rescues and admin retries make a row queued again.
CREATE CONSTRAINT TRIGGER jobs_wake_requeue AFTER UPDATE OF state ON notifyq.jobs
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.state = 'queued' AND OLD.state <> 'queued')
    EXECUTE FUNCTION notifyq.jobs_wake();

-- The producer contract for every language. Returns the new id, or the id of the queued or running job
-- that already holds dedup_key. SECURITY DEFINER so that a producer role needs only EXECUTE.
CREATE FUNCTION notifyq.enqueue(
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
            enqueue.priority,
            enqueue.dedup_key,
            coalesce(enqueue.max_attempts, notifyq.default_max_attempts())
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

-- SECURITY DEFINER: not callable by everyone. The owner can; sql/roles/02_grants.sql grants it to
-- the producer and worker roles.
REVOKE EXECUTE ON FUNCTION notifyq.enqueue(text, jsonb, text, timestamptz, integer, text, integer, interval)
    FROM PUBLIC;
