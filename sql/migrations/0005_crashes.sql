-- notifyq 0005: a job that was running when its worker died is forgiven once, then runs alone.
--
-- The attempt is counted when a job starts (begin_jobs), but one statement begins a batch of jobs and
-- their handlers then start one after another on the daemon's event loop. A handler that kills its
-- process before yielding (os._exit, a segfaulting extension) takes the rest of its batch down before
-- their handlers ran, and rescue could not tell them from it: all of them lost the attempt, and with
-- max_attempts = 1 all of them failed.
--
-- `crashes` counts the times a job had started on a worker whose lease then expired. Rescue forgives the
-- first (the attempt goes back, the job is queued) and marks the job: the daemon begins a job with
-- crashes > 0 in a statement of its own, and begins nothing else until its handler has started. Its
-- next crash is then its own, and counts (it cannot retry for ever).
ALTER TABLE notifyq.jobs
    ADD COLUMN crashes integer NOT NULL DEFAULT 0
        CONSTRAINT jobs_crashes_nonnegative CHECK (crashes >= 0);

-- Backstops for what an UPDATE with the table's rights could still write (the producer role has no
-- UPDATE; an owner or an operator's script does): attempts beyond max_attempts (a queued job with no
-- attempt left, which no claim would ever finish), and times nobody can compute with. NOT VALID: no
-- scan of an existing table and no lock beyond the moment; every new row and every update is checked.
ALTER TABLE notifyq.jobs
    ADD CONSTRAINT jobs_attempts_within_max CHECK (attempts <= max_attempts) NOT VALID,
    ADD CONSTRAINT jobs_times_finite CHECK (
        isfinite(created_at) AND isfinite(started_at) AND isfinite(finished_at)) NOT VALID;
