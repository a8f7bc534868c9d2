CREATE SCHEMA notifyq;
CREATE TYPE notifyq.job_state AS ENUM (
    'queued',
    'running',
    'succeeded',
    'failed',
    'cancelled'
);
CREATE FUNCTION notifyq.count_queues() RETURNS TABLE(queue text, task text, state text, jobs bigint, oldest_run_at timestamp with time zone)
    LANGUAGE sql STABLE
    SET enable_seqscan TO 'off'
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
SELECT * FROM (
    SELECT j.queue, j.task, CASE WHEN j.run_at > now() THEN 'scheduled' ELSE 'queued' END,
           count(*)::bigint, min(j.run_at)
    FROM notifyq.jobs AS j WHERE j.state = 'queued' GROUP BY 1, 2, 3
    UNION ALL
    SELECT j.queue, j.task, 'running', count(*)::bigint, min(j.run_at)
    FROM notifyq.jobs AS j WHERE j.state = 'running' GROUP BY 1, 2
    UNION ALL
    SELECT j.queue, j.task, 'failed', count(*)::bigint, min(j.run_at)
    FROM notifyq.jobs AS j WHERE j.state = 'failed' GROUP BY 1, 2
) AS c
ORDER BY 4 DESC
LIMIT 10000
$$;
CREATE FUNCTION notifyq.default_max_attempts() RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$SELECT 20$$;
CREATE FUNCTION notifyq.enqueue(task text, payload jsonb DEFAULT '{}'::jsonb, queue text DEFAULT 'default'::text, run_at timestamp with time zone DEFAULT NULL::timestamp with time zone, priority integer DEFAULT 0, dedup_key text DEFAULT NULL::text, max_attempts integer DEFAULT NULL::integer, run_in interval DEFAULT NULL::interval) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
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
CREATE FUNCTION notifyq.enqueue_many(tasks text[], payloads jsonb[] DEFAULT NULL::jsonb[], queues text[] DEFAULT NULL::text[], run_ats timestamp with time zone[] DEFAULT NULL::timestamp with time zone[], priorities integer[] DEFAULT NULL::integer[], dedup_keys text[] DEFAULT NULL::text[], max_attempts integer[] DEFAULT NULL::integer[], run_ins interval[] DEFAULT NULL::interval[]) RETURNS TABLE(pos bigint, id bigint)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
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
CREATE FUNCTION notifyq.enqueue_many_both_times(pos bigint) RETURNS timestamp with time zone
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    RAISE EXCEPTION 'notifyq.enqueue_many: element % gives run_ats and run_ins; give one or neither', pos
        USING ERRCODE = 'invalid_parameter_value';
END
$$;
CREATE FUNCTION notifyq.jobs_guard() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
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
$_$;
CREATE FUNCTION notifyq.jobs_wake() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
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
CREATE FUNCTION notifyq.max_run_at() RETURNS timestamp with time zone
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$SELECT '9999-12-31 00:00:00+00'::timestamptz$$;
CREATE FUNCTION notifyq.min_run_at() RETURNS timestamp with time zone
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$SELECT '0001-01-02 00:00:00+00'::timestamptz$$;
CREATE FUNCTION notifyq.now() RETURNS timestamp with time zone
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$SELECT coalesce(nullif(pg_catalog.current_setting('notifyq.now', true), '')::timestamptz,
                         pg_catalog.now())$$;
CREATE FUNCTION notifyq.queue_counts(max_age double precision) RETURNS TABLE(queue text, task text, state text, jobs bigint, oldest_age double precision, taken_at timestamp with time zone)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    reading notifyq.queue_counts%ROWTYPE;
    -- greatest() and least() put NaN above every number: NaN becomes the day.
    wanted float8 := least(greatest(coalesce(max_age, 1), 1), 86400);
BEGIN
    SELECT * INTO reading FROM notifyq.queue_counts;
    IF reading.taken_at IS NULL OR reading.taken_at <= clock_timestamp() - make_interval(secs => wanted)
    THEN
        -- hashtext('notifyq.queue_counts'): one key for this lock, apart from the wake-up locks' (7243, q).
        IF pg_try_advisory_xact_lock(hashtext('notifyq.queue_counts')::bigint) OR reading.taken_at IS NULL THEN
            INSERT INTO notifyq.queue_counts AS q (taken_at, counts)
            SELECT clock_timestamp(), coalesce(jsonb_agg(to_jsonb(c)), '[]'::jsonb)
            FROM notifyq.count_queues() AS c
            ON CONFLICT (singleton) DO UPDATE SET taken_at = excluded.taken_at, counts = excluded.counts
            RETURNING q.* INTO reading;
        END IF;
    END IF;
    RETURN QUERY
        SELECT c.queue, c.task, c.state, c.jobs,
               extract(epoch FROM now() - c.oldest_run_at)::float8, reading.taken_at
        FROM jsonb_to_recordset(reading.counts)
            AS c(queue text, task text, state text, jobs bigint, oldest_run_at timestamptz);
    IF NOT FOUND THEN
        RETURN QUERY SELECT NULL::text, NULL::text, NULL::text, 0::bigint, NULL::float8, reading.taken_at;
    END IF;
END
$$;
CREATE TABLE notifyq.schedules (
    name text NOT NULL,
    cron text NOT NULL,
    timezone text DEFAULT 'UTC'::text NOT NULL,
    queue text DEFAULT 'default'::text NOT NULL,
    task text NOT NULL,
    payload jsonb DEFAULT '{}'::jsonb NOT NULL,
    priority integer DEFAULT 0 NOT NULL,
    max_attempts integer,
    backfill interval DEFAULT '00:00:00'::interval NOT NULL,
    enabled boolean DEFAULT true NOT NULL,
    skip_overlap boolean DEFAULT false NOT NULL,
    source text DEFAULT 'sql'::text NOT NULL,
    since timestamp with time zone DEFAULT notifyq.now() NOT NULL,
    last_tick timestamp with time zone,
    next_tick timestamp with time zone,
    error text,
    payload_bytes integer DEFAULT 2 NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT schedules_source CHECK ((source = ANY (ARRAY['code'::text, 'sql'::text])))
);
CREATE FUNCTION notifyq.schedule(name text, cron text, task text, payload jsonb DEFAULT '{}'::jsonb, queue text DEFAULT 'default'::text, timezone text DEFAULT 'UTC'::text, priority integer DEFAULT 0, max_attempts integer DEFAULT NULL::integer, backfill interval DEFAULT '00:00:00'::interval, enabled boolean DEFAULT true, skip_overlap boolean DEFAULT false) RETURNS notifyq.schedules
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
INSERT INTO notifyq.schedules AS s
    (name, cron, task, payload, queue, timezone, priority, max_attempts, backfill, enabled, skip_overlap,
     source)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'sql')
ON CONFLICT ON CONSTRAINT schedules_pkey DO UPDATE
    timezone = excluded.timezone, priority = excluded.priority, max_attempts = excluded.max_attempts,
    backfill = excluded.backfill, enabled = excluded.enabled, skip_overlap = excluded.skip_overlap,
    source = 'sql'
RETURNING s.*
$_$;
CREATE FUNCTION notifyq.schedules_guard() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
DECLARE
    fields integer;
    too_long boolean;
    zone_known boolean;
    clock timestamptz;
BEGIN
    -- The clock `since` is set from. notifyq.now() may be pinned by a session (the tests move the clock
    -- that way); only a superuser's pin is honoured here, logged in and acting as one (not through SET
    -- ROLE, nor through notifyq.schedule(), which runs as its owner), or any writer could date a
    -- schedule back and have its backfill run ticks from before it existed.
    clock := CASE WHEN (SELECT bool_and(r.rolsuper) FROM pg_roles AS r
                        WHERE r.rolname IN (session_user, current_user))
                  THEN notifyq.now() ELSE clock_timestamp() END;  -- the row's writing, not its transaction's start
    IF NEW.name IS NULL OR char_length(NEW.name) NOT BETWEEN 1 AND 200 OR NEW.name ~ '[\x01-\x1f\x7f]' THEN
        RAISE EXCEPTION 'notifyq.schedules.name: must be 1 to 200 characters with no control characters (got %)',
            coalesce(char_length(NEW.name)::text || ' characters', 'NULL')
            USING ERRCODE = 'check_violation', COLUMN = 'name', CONSTRAINT = 'schedules_name',
                  SCHEMA = 'notifyq', TABLE = 'schedules';
    END IF;
    fields := coalesce(array_length(regexp_split_to_array(btrim(NEW.cron, E' \t'), E'[ \t]+'), 1), 0);
    -- Printable ASCII only, fields apart by spaces or tabs: a newline or a no-break space would make the
    -- parser see other fields than this count (every minute where the writer saw hourly).
    IF NEW.cron IS NULL OR char_length(NEW.cron) > 200 OR btrim(NEW.cron, E' \t') = ''
       OR NEW.cron ~ E'[^\x20-\x7e\t]'
       OR NOT (fields IN (5, 6) OR (fields = 1 AND btrim(NEW.cron, E' \t') LIKE '@%')) THEN
        RAISE EXCEPTION 'notifyq.schedules.cron: must be 5 fields (minute hour day-of-month month day-of-week), 6 with a seconds field first, or an @ alias such as @daily, in printable ASCII with fields apart by spaces or tabs (got %)',
            coalesce(quote_literal(left(NEW.cron, 200)), 'NULL')
            USING ERRCODE = 'check_violation', COLUMN = 'cron', CONSTRAINT = 'schedules_cron',
                  SCHEMA = 'notifyq', TABLE = 'schedules';
    END IF;
    -- A zone name Postgres knows, exactly as pg_timezone_names spells it (not an abbreviation such as
    -- PST, nor a POSIX rule such as UTC+5, which the daemons' parser would refuse later). That view reads
    -- the zone files, about 30 ms a row: a daemon declaring hundreds of schedules timed out at start. So
    -- the names known when the schema was migrated are kept in notifyq.zone_names, and only a name not
    -- found there (a zone added by a later tzdata, or a wrong one) pays for the view.
    zone_known := NEW.timezone IS NOT NULL
        AND (EXISTS (SELECT 1 FROM notifyq.zone_names AS z WHERE z.name = NEW.timezone)
             OR EXISTS (SELECT 1 FROM pg_timezone_names AS z WHERE z.name = NEW.timezone));
    IF NOT zone_known THEN
        RAISE EXCEPTION 'notifyq.schedules.timezone: must be an IANA time zone name such as UTC or Europe/Berlin (got %)',
            coalesce(quote_literal(left(NEW.timezone, 100)), 'NULL')
            USING ERRCODE = 'check_violation', COLUMN = 'timezone', CONSTRAINT = 'schedules_timezone',
                  SCHEMA = 'notifyq', TABLE = 'schedules';
    END IF;
    IF NEW.task IS NULL OR char_length(NEW.task) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'notifyq.schedules.task: must be 1 to 200 characters (got %)',
            coalesce(char_length(NEW.task)::text || ' characters', 'NULL')
            USING ERRCODE = 'check_violation', COLUMN = 'task', CONSTRAINT = 'schedules_task',
                  SCHEMA = 'notifyq', TABLE = 'schedules';
    END IF;
    IF NEW.queue IS NULL OR NEW.queue !~ '^[a-z0-9][a-z0-9_.:-]{0,62}$' THEN
        RAISE EXCEPTION 'notifyq.schedules.queue: must match ^[a-z0-9][a-z0-9_.:-]{0,62}$ (lowercase letters, digits, _ . : -; at most 63 characters)'
            USING ERRCODE = 'check_violation', COLUMN = 'queue', CONSTRAINT = 'schedules_queue',
                  SCHEMA = 'notifyq', TABLE = 'schedules';
    END IF;
    IF NEW.priority IS NULL OR NEW.priority NOT BETWEEN -1000 AND 1000 THEN
        RAISE EXCEPTION 'notifyq.schedules.priority: must be between -1000 and 1000 (got %)',
            coalesce(NEW.priority::text, 'NULL')
            USING ERRCODE = 'check_violation', COLUMN = 'priority', CONSTRAINT = 'schedules_priority',
                  SCHEMA = 'notifyq', TABLE = 'schedules';
    END IF;
    IF NEW.max_attempts NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'notifyq.schedules.max_attempts: must be between 1 and 1000, or NULL for the task''s or the default (got %)',
            NEW.max_attempts
            USING ERRCODE = 'check_violation', COLUMN = 'max_attempts', CONSTRAINT = 'schedules_max_attempts',
                  SCHEMA = 'notifyq', TABLE = 'schedules';
    END IF;
    NEW.payload_bytes := octet_length(NEW.payload::text);
    IF NEW.payload IS NULL OR NEW.payload_bytes > 1048576 THEN
        RAISE EXCEPTION 'notifyq.schedules.payload: must be a JSON value of at most 1048576 bytes (got %)',
            coalesce(octet_length(NEW.payload::text)::text || ' bytes', 'NULL')
            USING ERRCODE = 'check_violation', COLUMN = 'payload', CONSTRAINT = 'schedules_payload',
                  SCHEMA = 'notifyq', TABLE = 'schedules';
    END IF;
    -- Months and days are calendar lengths in an interval; the limit is on its length from now, measured
    -- only once the interval is known to be short enough for that sum not to overflow.
    IF NEW.backfill IS NULL OR NEW.backfill < interval '0' OR NEW.backfill > interval '400 days' THEN
        too_long := true;
    ELSE
        too_long := clock + NEW.backfill > clock + interval '366 days';
    END IF;
    IF too_long THEN
        RAISE EXCEPTION 'notifyq.schedules.backfill: must be an interval from 0 to 366 days (got %)',
            coalesce(NEW.backfill::text, 'NULL')
            USING ERRCODE = 'check_violation', COLUMN = 'backfill', CONSTRAINT = 'schedules_backfill',
                  SCHEMA = 'notifyq', TABLE = 'schedules';
    END IF;
    IF NEW.enabled IS NULL OR NEW.skip_overlap IS NULL THEN
        RAISE EXCEPTION 'notifyq.schedules.%: must be true or false (got NULL)',
            CASE WHEN NEW.enabled IS NULL THEN 'enabled' ELSE 'skip_overlap' END
            USING ERRCODE = 'not_null_violation', SCHEMA = 'notifyq', TABLE = 'schedules';
    END IF;
    IF TG_OP = 'INSERT' THEN
        -- A new schedule never backfills the past, whatever `since` or `last_tick` the writer gave.
        NEW.since := clock;
        NEW.last_tick := NULL;
        NEW.next_tick := NULL;
        NEW.error := NULL;
        NEW.created_at := now();
    ELSIF NEW.cron IS DISTINCT FROM OLD.cron OR NEW.timezone IS DISTINCT FROM OLD.timezone
          OR (NEW.enabled AND NOT OLD.enabled) THEN
        -- A changed or re-enabled schedule starts afresh: no tick of the new rule before now runs. A last
        -- tick ahead of the clock (the clock was stepped back) is forgotten, or it would hold every tick
        -- until then; the unique (schedule, tick) key still refuses a tick whose job exists.
        NEW.since := clock;
        NEW.next_tick := NULL;
        NEW.error := NULL;
        IF NEW.last_tick > NEW.since THEN
            NEW.last_tick := NULL;
        END IF;
    END IF;
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END
$_$;
CREATE FUNCTION notifyq.schedules_notify() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    PERFORM pg_notify('notifyq.schedules', left(coalesce(NEW.name, OLD.name), 200));
    RETURN NULL;
END
$$;
CREATE TABLE notifyq.api_tokens (
    name text NOT NULL,
    token_hash bytea NOT NULL,
    queues text[] NOT NULL,
    can_write boolean DEFAULT false NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    revoked_at timestamp with time zone,
    CONSTRAINT api_tokens_name_check CHECK ((name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'::text)),
    CONSTRAINT api_tokens_queues_check CHECK (((cardinality(queues) >= 1) AND (cardinality(queues) <= 100))),
    CONSTRAINT api_tokens_token_hash_check CHECK ((octet_length(token_hash) = 32))
);
CREATE TABLE notifyq.disabled_endpoints (
    name text NOT NULL,
    reason text NOT NULL,
    disabled_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT disabled_endpoints_name_check CHECK ((name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'::text)),
    CONSTRAINT disabled_endpoints_reason_check CHECK ((char_length(reason) <= 1000))
);
CREATE TABLE notifyq.jobs (
    id bigint NOT NULL,
    queue text DEFAULT 'default'::text NOT NULL,
    task text NOT NULL,
    payload jsonb DEFAULT '{}'::jsonb NOT NULL,
    priority integer DEFAULT 0 NOT NULL,
    run_at timestamp with time zone DEFAULT notifyq.now() NOT NULL,
    state notifyq.job_state DEFAULT 'queued'::notifyq.job_state NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    max_attempts integer,
    lease_token uuid,
    leased_until timestamp with time zone,
    worker_id uuid,
    dedup_key text,
    last_error text,
    result jsonb,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    unclear_crashes integer DEFAULT 0 NOT NULL,
    schedule text,
    schedule_tick timestamp with time zone,
    backfilled boolean DEFAULT false NOT NULL,
    snoozes integer DEFAULT 0 NOT NULL,
    CONSTRAINT jobs_attempts_range CHECK ((attempts >= 0)),
    CONSTRAINT jobs_dedup_key_length CHECK (((dedup_key IS NULL) OR ((char_length(dedup_key) >= 1) AND (char_length(dedup_key) <= 200)))),
    CONSTRAINT jobs_lease_only_when_running CHECK (((state = 'running'::notifyq.job_state) = ((lease_token IS NOT NULL) AND (leased_until IS NOT NULL)))),
    CONSTRAINT jobs_leased_until_finite CHECK (isfinite(leased_until)),
    CONSTRAINT jobs_max_attempts_range CHECK (((max_attempts >= 1) AND (max_attempts <= 1000))),
    CONSTRAINT jobs_priority_range CHECK (((priority >= '-1000'::integer) AND (priority <= 1000))),
    CONSTRAINT jobs_queue_format CHECK ((queue ~ '^[a-z0-9][a-z0-9_.:-]{0,62}$'::text)),
    CONSTRAINT jobs_run_at_finite CHECK (isfinite(run_at)),
    CONSTRAINT jobs_run_at_range CHECK (((run_at >= notifyq.min_run_at()) AND (run_at <= notifyq.max_run_at()))),
    CONSTRAINT jobs_snoozes_nonnegative CHECK ((snoozes >= 0)),
    CONSTRAINT jobs_task_length CHECK (((char_length(task) >= 1) AND (char_length(task) <= 200))),
    CONSTRAINT jobs_unclear_crashes_nonnegative CHECK ((unclear_crashes >= 0))
)
WITH (fillfactor='80', autovacuum_vacuum_scale_factor='0.01', autovacuum_analyze_scale_factor='0.02');
ALTER TABLE notifyq.jobs ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME notifyq.jobs_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);
CREATE TABLE notifyq.queue_counts (
    singleton boolean DEFAULT true NOT NULL,
    taken_at timestamp with time zone NOT NULL,
    counts jsonb NOT NULL,
    CONSTRAINT queue_counts_one_row CHECK (singleton)
);
CREATE TABLE notifyq.schema_migrations (
    version integer NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);
CREATE TABLE notifyq.workers (
    id uuid NOT NULL,
    hostname text NOT NULL,
    pid integer NOT NULL,
    queues text[] NOT NULL,
    tasks text[] NOT NULL,
    concurrency integer NOT NULL,
    running integer DEFAULT 0 NOT NULL,
    lease_seconds double precision NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    last_seen timestamp with time zone DEFAULT now() NOT NULL,
    entered_through timestamp with time zone,
    schedules text[] DEFAULT '{}'::text[] NOT NULL
);
CREATE TABLE notifyq.zone_names (
    name text NOT NULL
);
ALTER TABLE ONLY notifyq.api_tokens
    ADD CONSTRAINT api_tokens_pkey PRIMARY KEY (name);
ALTER TABLE ONLY notifyq.api_tokens
    ADD CONSTRAINT api_tokens_token_hash_key UNIQUE (token_hash);
ALTER TABLE ONLY notifyq.disabled_endpoints
    ADD CONSTRAINT disabled_endpoints_pkey PRIMARY KEY (name);
ALTER TABLE notifyq.jobs
    ADD CONSTRAINT jobs_attempts_within_max CHECK ((attempts <= max_attempts)) NOT VALID;
ALTER TABLE ONLY notifyq.jobs
    ADD CONSTRAINT jobs_pkey PRIMARY KEY (id);
ALTER TABLE notifyq.jobs
    ADD CONSTRAINT jobs_schedule_tick_pair CHECK (((schedule_tick IS NULL) OR (schedule IS NOT NULL))) NOT VALID;
ALTER TABLE notifyq.jobs
    ADD CONSTRAINT jobs_times_finite CHECK ((isfinite(created_at) AND isfinite(started_at) AND isfinite(finished_at))) NOT VALID;
ALTER TABLE ONLY notifyq.queue_counts
    ADD CONSTRAINT queue_counts_pkey PRIMARY KEY (singleton);
ALTER TABLE ONLY notifyq.schedules
    ADD CONSTRAINT schedules_pkey PRIMARY KEY (name);
ALTER TABLE ONLY notifyq.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);
ALTER TABLE ONLY notifyq.workers
    ADD CONSTRAINT workers_pkey PRIMARY KEY (id);
ALTER TABLE ONLY notifyq.zone_names
    ADD CONSTRAINT zone_names_pkey PRIMARY KEY (name);
CREATE INDEX jobs_claim_idx ON notifyq.jobs USING btree (queue, priority DESC, run_at, id) WHERE (state = 'queued'::notifyq.job_state);
CREATE UNIQUE INDEX jobs_dedup_key_idx ON notifyq.jobs USING btree (dedup_key) WHERE ((dedup_key IS NOT NULL) AND (state = ANY (ARRAY['queued'::notifyq.job_state, 'running'::notifyq.job_state])));
CREATE INDEX jobs_failed_idx ON notifyq.jobs USING btree (queue) WHERE (state = 'failed'::notifyq.job_state);
CREATE INDEX jobs_finished_idx ON notifyq.jobs USING btree (finished_at) WHERE (state = ANY (ARRAY['succeeded'::notifyq.job_state, 'failed'::notifyq.job_state, 'cancelled'::notifyq.job_state]));
CREATE INDEX jobs_running_idx ON notifyq.jobs USING btree (worker_id) WHERE (state = 'running'::notifyq.job_state);
CREATE INDEX jobs_schedule_idx ON notifyq.jobs USING btree (queue, run_at) WHERE ((state = 'queued'::notifyq.job_state) AND (run_at > '-infinity'::timestamp with time zone));
CREATE INDEX jobs_schedule_live_idx ON notifyq.jobs USING btree (schedule) WHERE ((schedule IS NOT NULL) AND (state = ANY (ARRAY['queued'::notifyq.job_state, 'running'::notifyq.job_state])));
CREATE UNIQUE INDEX jobs_tick_key ON notifyq.jobs USING btree (schedule, schedule_tick) WHERE (schedule IS NOT NULL);
CREATE TRIGGER jobs_guard_insert BEFORE INSERT ON notifyq.jobs FOR EACH ROW EXECUTE FUNCTION notifyq.jobs_guard();
CREATE TRIGGER jobs_guard_update BEFORE UPDATE ON notifyq.jobs FOR EACH ROW WHEN (((new.queue IS DISTINCT FROM old.queue) OR (new.task IS DISTINCT FROM old.task) OR (new.priority IS DISTINCT FROM old.priority) OR (new.dedup_key IS DISTINCT FROM old.dedup_key) OR ((new.run_at IS DISTINCT FROM old.run_at) AND ((new.run_at < notifyq.min_run_at()) OR (new.run_at > notifyq.max_run_at()))) OR ((new.max_attempts IS DISTINCT FROM old.max_attempts) AND ((new.max_attempts < 1) OR (new.max_attempts > 1000))) OR (NOT isfinite(new.leased_until)))) EXECUTE FUNCTION notifyq.jobs_guard();
CREATE TRIGGER jobs_guard_update_payload BEFORE UPDATE OF payload ON notifyq.jobs FOR EACH ROW EXECUTE FUNCTION notifyq.jobs_guard();
CREATE CONSTRAINT TRIGGER jobs_wake_insert AFTER INSERT ON notifyq.jobs DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION notifyq.jobs_wake();
CREATE CONSTRAINT TRIGGER jobs_wake_requeue AFTER UPDATE OF state ON notifyq.jobs DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (((new.state = 'queued'::notifyq.job_state) AND (old.state <> 'queued'::notifyq.job_state))) EXECUTE FUNCTION notifyq.jobs_wake();
CREATE TRIGGER schedules_guard_insert BEFORE INSERT ON notifyq.schedules FOR EACH ROW EXECUTE FUNCTION notifyq.schedules_guard();
CREATE TRIGGER schedules_guard_update BEFORE UPDATE ON notifyq.schedules FOR EACH ROW WHEN (((((((((((((((new.name IS DISTINCT FROM old.name) OR (new.cron IS DISTINCT FROM old.cron)) OR (new.timezone IS DISTINCT FROM old.timezone)) OR (new.queue IS DISTINCT FROM old.queue)) OR (new.task IS DISTINCT FROM old.task)) OR (new.payload IS DISTINCT FROM old.payload)) OR (new.priority IS DISTINCT FROM old.priority)) OR (new.max_attempts IS DISTINCT FROM old.max_attempts)) OR (new.backfill IS DISTINCT FROM old.backfill)) OR (new.enabled IS DISTINCT FROM old.enabled)) OR (new.skip_overlap IS DISTINCT FROM old.skip_overlap)) OR (new.source IS DISTINCT FROM old.source)) OR (new.since IS DISTINCT FROM old.since)) OR (new.payload_bytes IS DISTINCT FROM old.payload_bytes))) EXECUTE FUNCTION notifyq.schedules_guard();
CREATE TRIGGER schedules_notify_change AFTER INSERT OR DELETE ON notifyq.schedules FOR EACH ROW EXECUTE FUNCTION notifyq.schedules_notify();
CREATE TRIGGER schedules_notify_update AFTER UPDATE ON notifyq.schedules FOR EACH ROW WHEN ((old.updated_at IS DISTINCT FROM new.updated_at)) EXECUTE FUNCTION notifyq.schedules_notify();
