-- notifyq 0009: how many times a job was snoozed. A snooze gives its attempt back, so nothing bounded
-- how often a job could be put off: the built-in callback task honours a receiver's Retry-After that way,
-- and a receiver answering "Retry-After: 0" for ever was called every few seconds for days. With the
-- count, a handler can put a job off a bounded number of times (and further apart each time); operators
-- see it in `notifyq jobs show` and the API. Cumulative; `notifyq jobs retry` resets it with attempts.
ALTER TABLE notifyq.jobs
    ADD COLUMN snoozes integer NOT NULL DEFAULT 0
        CONSTRAINT jobs_snoozes_nonnegative CHECK (snoozes >= 0);
