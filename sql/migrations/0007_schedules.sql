-- notifyq 0007: periodic jobs. notifyq replaces cron: a schedule is a row, and each of its ticks becomes
-- exactly one job however many daemons run, with no leader.
--
-- The guard against a double tick is the schedule row itself: the statement that enqueues a tick first
-- moves the row's `last_tick` forward, only if the row is still as the daemon read it (its last_tick and
-- its updated_at), and inserts the job from the row that UPDATE returns. A competing daemon finds the row
-- locked and skips it (trying again a second later), or finds it changed, and does nothing. A unique key on
-- (schedule, schedule_tick) in notifyq.jobs is the second guard. last_tick is never deleted by retention,
-- so a tick whose job was pruned cannot run again (a peer that kept its dedup rows in the jobs table ran
-- ticks again once they were pruned).
--
-- Building the two new indexes reads notifyq.jobs once each and blocks writes to it meanwhile: about a
-- second per million rows on the benchmark machine.

-- == the jobs a tick makes ==============================================================================
-- Which schedule made the job and for which tick (the tick's UTC instant; the job's run_at starts as the
-- same instant but moves with retries), and whether it ran late, from a backfill.
ALTER TABLE notifyq.jobs
    ADD COLUMN schedule text,
    ADD COLUMN schedule_tick timestamptz,
    ADD COLUMN backfilled boolean NOT NULL DEFAULT false,
    -- A tick is always a schedule's; a schedule's job without a tick is one run by hand (`notifyq
    -- schedules trigger`), outside the ticks, so it never takes a tick's place in the unique key below.
    -- NOT VALID: every existing row has both NULL; new rows are checked, and no scan of the table is
    -- needed under this migration's lock.
    ADD CONSTRAINT jobs_schedule_tick_pair CHECK (schedule_tick IS NULL OR schedule IS NOT NULL) NOT VALID;

-- The second guard: one job per (schedule, tick), whatever happens to the schedule row.
CREATE UNIQUE INDEX jobs_tick_key ON notifyq.jobs (schedule, schedule_tick) WHERE schedule IS NOT NULL;
-- "Is a run of this schedule still queued or running?" (skip_overlap), without reading its history.
CREATE INDEX jobs_schedule_live_idx ON notifyq.jobs (schedule)
    WHERE schedule IS NOT NULL AND state IN ('queued', 'running');

-- == the schedules ======================================================================================
-- A public contract, like notifyq.jobs: any program may INSERT, UPDATE or DELETE rows (or call
-- notifyq.schedule()); the daemons write only last_tick, next_tick and error. The producer role may write
-- the contract's columns only (sql/roles/02_grants.sql), not the daemons' bookkeeping.
CREATE TABLE notifyq.schedules (
    name          text PRIMARY KEY,
    cron          text NOT NULL,
    timezone      text NOT NULL DEFAULT 'UTC',
    queue         text NOT NULL DEFAULT 'default',
    task          text NOT NULL,
    payload       jsonb NOT NULL DEFAULT '{}',
    priority      integer NOT NULL DEFAULT 0,
    max_attempts  integer,
    backfill      interval NOT NULL DEFAULT '0',
    enabled       boolean NOT NULL DEFAULT true,
    -- Skip a tick (counted as skipped) while an earlier run of this schedule is still queued or running.
    skip_overlap  boolean NOT NULL DEFAULT false,
    -- 'code': declared by @registry.periodic and upserted by the daemons that run that code; 'sql': any
    -- other writer. Only code schedules are removed by `notifyq schedules prune`.
    source        text NOT NULL DEFAULT 'sql',
    -- Ticks at or before `since` never run: it is set when the row is created, re-enabled, or its cron
    -- or zone changes, so that none of these backfills the past.
    since         timestamptz NOT NULL DEFAULT notifyq.now(),
    last_tick     timestamptz,  -- the latest tick handled (enqueued, skipped or missed)
    next_tick     timestamptz,  -- the next tick, as the daemons last computed it
    error         text,         -- why the daemons cannot compute its ticks; NULL while they can
    -- The payload's size as text, kept by the guard: a backfill's ticks are inserted in statements of a
    -- bounded size (a megabyte payload times a thousand ticks would outlast any statement timeout).
    payload_bytes integer NOT NULL DEFAULT 2,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedules_source CHECK (source IN ('code', 'sql'))
);

-- The zone names Postgres knew at this migration, for the guard's quick check (see there).
CREATE TABLE notifyq.zone_names (name text PRIMARY KEY);
INSERT INTO notifyq.zone_names SELECT DISTINCT name FROM pg_timezone_names;

-- The limits a schedule's job is held to are the jobs guard's (migration 0004), checked here too so that
-- a bad schedule is refused when it is written, not at its first tick. The cron expression is checked
-- for its shape only (5 fields, or 6 with seconds first, or an @ alias): the daemons' parser judges the
-- rest and reports it on the row (`error`). The zone must be one Postgres knows by its IANA name.
CREATE FUNCTION notifyq.schedules_guard() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
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
$$;

-- On INSERT always; on UPDATE only when a writer's column changed, so the daemons' own writes (last_tick,
-- next_tick, error) cost no plpgsql call and no lookup of the zone list.
CREATE TRIGGER schedules_guard_insert BEFORE INSERT ON notifyq.schedules
    FOR EACH ROW EXECUTE FUNCTION notifyq.schedules_guard();
CREATE TRIGGER schedules_guard_update BEFORE UPDATE ON notifyq.schedules
    FOR EACH ROW
    WHEN ((NEW.name, NEW.cron, NEW.timezone, NEW.queue, NEW.task, NEW.payload, NEW.priority, NEW.max_attempts,
           NEW.backfill, NEW.enabled, NEW.skip_overlap, NEW.source, NEW.since, NEW.payload_bytes)
          IS DISTINCT FROM
          (OLD.name, OLD.cron, OLD.timezone, OLD.queue, OLD.task, OLD.payload, OLD.priority, OLD.max_attempts,
           OLD.backfill, OLD.enabled, OLD.skip_overlap, OLD.source, OLD.since, OLD.payload_bytes))
    EXECUTE FUNCTION notifyq.schedules_guard();

-- Tell the daemons: a change takes effect at once (they re-read the schedules), not at their next look.
-- Same rule as the guard: the daemons' own writes notify nobody.
CREATE FUNCTION notifyq.schedules_notify() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    PERFORM pg_notify('notifyq.schedules', left(coalesce(NEW.name, OLD.name), 200));
    RETURN NULL;
END
$$;
CREATE TRIGGER schedules_notify_change AFTER INSERT OR DELETE ON notifyq.schedules
    FOR EACH ROW EXECUTE FUNCTION notifyq.schedules_notify();
CREATE TRIGGER schedules_notify_update AFTER UPDATE ON notifyq.schedules
    FOR EACH ROW
    WHEN (OLD.updated_at IS DISTINCT FROM NEW.updated_at)
    EXECUTE FUNCTION notifyq.schedules_notify();

-- == from any language ==================================================================================
-- Create or replace a schedule by name; what is not given takes the column's default. Returns the row.
-- A schedule written here is an 'sql' one (prune never removes it), even if code declared it before.
-- SECURITY DEFINER: it writes `source`, which the producer role may not (sql/roles/02_grants.sql).
CREATE FUNCTION notifyq.schedule(
    name text,
    cron text,
    task text,
    payload jsonb DEFAULT '{}',
    queue text DEFAULT 'default',
    timezone text DEFAULT 'UTC',
    priority integer DEFAULT 0,
    max_attempts integer DEFAULT NULL,
    backfill interval DEFAULT '0',
    enabled boolean DEFAULT true,
    skip_overlap boolean DEFAULT false
) RETURNS notifyq.schedules
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
INSERT INTO notifyq.schedules AS s
    (name, cron, task, payload, queue, timezone, priority, max_attempts, backfill, enabled, skip_overlap,
     source)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'sql')
ON CONFLICT ON CONSTRAINT schedules_pkey DO UPDATE
SET cron = excluded.cron, task = excluded.task, payload = excluded.payload, queue = excluded.queue,
    timezone = excluded.timezone, priority = excluded.priority, max_attempts = excluded.max_attempts,
    backfill = excluded.backfill, enabled = excluded.enabled, skip_overlap = excluded.skip_overlap,
    source = 'sql'
RETURNING s.*
$$;
REVOKE ALL ON FUNCTION notifyq.schedule(text, text, text, jsonb, text, text, integer, integer, interval, boolean,
                                        boolean) FROM PUBLIC;

-- == the daemons' declarations, for prune ===============================================================
-- The code schedules each live daemon declares: `notifyq schedules prune` removes only those no live
-- daemon declares (during a rolling deploy, the daemons still on the old code keep theirs).
ALTER TABLE notifyq.workers ADD COLUMN schedules text[] NOT NULL DEFAULT '{}';
