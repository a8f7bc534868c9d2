-- notifyq 0006: the database gauges cost the same beside a million finished rows as beside none, and
-- the same with eight daemons as with one.
--
-- Before, every daemon ran one grouped scan of `state IN ('queued', 'running', 'failed')` every 15 s.
-- Once ANALYZE saw the table, Postgres read that as a sequential scan of every row, the succeeded ones
-- retention keeps included: 130 ms per refresh beside 1,000,000 finished rows, once per daemon.
--
-- Now one count per state, each through that state's partial index (sequential scans are turned off for
-- the count alone: its cost must not depend on what ANALYZE last saw), and one daemon counts for all:
-- the reading is kept in `notifyq.queue_counts`, and a daemon that finds it older than it wants recounts
-- only if no other daemon is recounting at that moment; the others serve the reading they find.

-- The count itself: queued (split into runnable and scheduled), running and failed jobs per queue and
-- task, with each group's oldest run_at. Capped so that a producer inventing task names cannot make the
-- reading unbounded.
CREATE FUNCTION notifyq.count_queues()
    RETURNS TABLE (queue text, task text, state text, jobs bigint, oldest_run_at timestamptz)
    LANGUAGE sql STABLE
    SET enable_seqscan = off
    SET search_path = pg_catalog, pg_temp
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

CREATE TABLE notifyq.queue_counts (
    singleton boolean PRIMARY KEY DEFAULT true CONSTRAINT queue_counts_one_row CHECK (singleton),
    taken_at  timestamptz NOT NULL,
    counts    jsonb NOT NULL
);

-- The daemons' reading, recounted first when it is older than `max_age` seconds (clamped to 1 s to
-- a day, NULL and NaN included) and no other session is recounting. Only the worker role may call it:
-- a session holding the counting lock in an open transaction keeps everyone on the old reading, and
-- each call may write the row. Tools that want a fresh count with no write (`notifyq status`, `check`,
-- an observer, a read-only node) call notifyq.count_queues() instead. With no job to count it returns
-- one row of NULL groups, so that when it was counted is still known.
CREATE FUNCTION notifyq.queue_counts(max_age float8)
    RETURNS TABLE (queue text, task text, state text, jobs bigint, oldest_age float8, taken_at timestamptz)
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
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
REVOKE EXECUTE ON FUNCTION notifyq.queue_counts(float8) FROM PUBLIC;
