-- The documented GRANT set. Run after every `notifyq migrate`, as notifyq_owner or a superuser:
--     psql "$DATABASE_URL" -f sql/roles/02_grants.sql
-- Idempotent. Owner-only powers (ALTER TABLE, DISABLE TRIGGER, DROP) are never granted.

GRANT USAGE ON SCHEMA notifyq TO notifyq_producer, notifyq_worker, notifyq_observer;

-- Producers: insert the producer columns only; the guard trigger refuses anything else.
GRANT INSERT (task, payload, queue, run_at, priority, dedup_key, max_attempts) ON notifyq.jobs
    TO notifyq_producer;
-- enqueue() is SECURITY DEFINER (it reads back a dedup hit); migration 0001 revokes it from PUBLIC.
GRANT EXECUTE ON FUNCTION notifyq.enqueue(text, jsonb, text, timestamptz, integer, text, integer, interval)
    TO notifyq_producer, notifyq_worker;
GRANT EXECUTE ON FUNCTION notifyq.enqueue_many(text[], jsonb[], text[], timestamptz[], integer[], text[],
                                               integer[], interval[])
    TO notifyq_producer, notifyq_worker;

-- Workers: claim, complete, heartbeat, rescue and prune jobs; keep their own workers row.
GRANT SELECT, UPDATE, DELETE ON notifyq.jobs TO notifyq_worker;
GRANT INSERT (task, payload, queue, run_at, priority, dedup_key, max_attempts) ON notifyq.jobs
    TO notifyq_worker;
-- A schedule's tick: the job says which schedule made it (migration 0007).
GRANT INSERT (schedule, schedule_tick, backfilled) ON notifyq.jobs TO notifyq_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON notifyq.workers TO notifyq_worker;
GRANT SELECT ON notifyq.schema_migrations TO notifyq_worker;

-- The daemons' shared gauge reading (migration 0006): SECURITY DEFINER, for workers only; others count
-- with notifyq.count_queues(), which writes nothing.
GRANT EXECUTE ON FUNCTION notifyq.queue_counts(float8) TO notifyq_worker;

-- Schedules (migration 0007) are written by any program, as producers write jobs, through the public
-- contract's columns only: the daemons' bookkeeping (source, since, last_tick, next_tick, error) is
-- theirs, or a producer could make a schedule run ticks from before it existed. The daemons upsert their
-- code's schedules, move each one's ticks, and `notifyq schedules prune` removes stale ones.
GRANT SELECT, DELETE ON notifyq.schedules TO notifyq_producer;
GRANT INSERT (name, cron, timezone, queue, task, payload, priority, max_attempts, backfill, enabled, skip_overlap),
      UPDATE (name, cron, timezone, queue, task, payload, priority, max_attempts, backfill, enabled, skip_overlap)
    ON notifyq.schedules TO notifyq_producer;
GRANT SELECT, INSERT, UPDATE, DELETE ON notifyq.schedules TO notifyq_worker;
-- The schedules guard checks a zone against this list, as whoever writes the row.
GRANT SELECT ON notifyq.zone_names TO notifyq_producer, notifyq_worker;
GRANT EXECUTE ON FUNCTION notifyq.schedule(text, text, text, jsonb, text, text, integer, integer, interval,
                                           boolean, boolean)
    TO notifyq_producer, notifyq_worker;

-- Callbacks (migration 0008): a daemon disables an endpoint on a 410 and reads which are disabled.
GRANT SELECT, INSERT, DELETE ON notifyq.disabled_endpoints TO notifyq_worker;
-- The HTTP API runs in the daemon: it reads tokens; the owner makes and revokes them (`notifyq tokens`).
GRANT SELECT ON notifyq.api_tokens TO notifyq_worker;

-- Observers: read everything, change nothing.
GRANT SELECT ON ALL TABLES IN SCHEMA notifyq TO notifyq_observer;
-- Except the API tokens' hashes: no reader needs them.
REVOKE SELECT ON notifyq.api_tokens FROM notifyq_observer;
