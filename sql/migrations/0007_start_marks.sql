-- notifyq 0007: a job's start costs no write of its own. The claim counts the attempt and numbers each
-- job in its daemon's claim order; the daemon moves marks on its own `workers` row instead.
--
-- Until 0006 each job was written three times: claimed, begun (attempt counted, right before its
-- handler ran) and finished. The begin was a third of the database's time in a drain and a round trip
-- before every handler. Now:
-- - the claim counts the attempt and sets `claim_seq`, the job's place in its worker's claim order,
--   from `workers.claimed_seq`, a counter the claim moves in the same statement;
-- - before calling handlers, the daemon moves `workers.begun_seq` past them (one small row update for
--   a batch of jobs, sent ahead of need, refused while the worker's last heartbeat is older than a
--   lease); a job beyond it never began;
-- - as before, `entered_seq` (was `entered_through`, a time) says up to where every begun job has had its
--   handler called.
-- Rescue reads three regions from the two marks: beyond `begun_seq`, never begun (back to the queue,
-- attempt refunded); up to `entered_seq`, ran (counted); between, unclear (forgiven once, then begun
-- alone, as 0005 did).
--
-- Daemons from before 0007 must be stopped before it is applied: they write `entered_through` and
-- count attempts when a job starts.
ALTER TABLE notifyq.jobs ADD COLUMN claim_seq bigint;

ALTER TABLE notifyq.workers
    DROP COLUMN entered_through,
    ADD COLUMN claimed_seq bigint NOT NULL DEFAULT 0,
    ADD COLUMN begun_seq bigint NOT NULL DEFAULT 0,
    ADD COLUMN entered_seq bigint NOT NULL DEFAULT 0;
