-- notifyq 0003: the claim can only use jobs_claim_idx.
--
-- jobs_schedule_idx (queue, run_at) WHERE state = 'queued' also matched the claim's WHERE clause, and with
-- stale statistics (right after a bulk insert, before autoanalyze) the planner chose it: it then read every
-- runnable row of the queue and sorted them on each claim (55 ms per claim with 70,000 queued jobs, and a
-- 100,000-job drain at 1,500 jobs/s). The extra predicate below is always true (run_at is finite, see
-- jobs_run_at_finite) but the claim's `run_at <= now()` does not imply it, so the planner can no longer
-- pick this index for the claim; next_run_delay states it and keeps using the index.
DROP INDEX notifyq.jobs_schedule_idx;
CREATE INDEX jobs_schedule_idx ON notifyq.jobs (queue, run_at)
    WHERE state = 'queued' AND run_at > '-infinity'::timestamptz;

-- A queue table churns (each job is updated twice), and until vacuum the dead entries stay in its
-- indexes. Vacuum it once 1% of its rows are dead rather than the default 20%, and analyze it after 2%
-- of changes, so that a bulk insert does not leave the planner with an empty table in mind.
ALTER TABLE notifyq.jobs SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02);
