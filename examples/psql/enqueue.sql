-- Enqueue a job from psql, inside your own transaction: it exists only if the transaction commits.
-- This one is a callback: the daemon will POST {"order": 42} to :url, signed, with retries.
--     psql "$DATABASE_URL" -v url=https://your.app/hooks/order -f examples/psql/enqueue.sql
BEGIN;
-- ... your application's own writes go here ...
SELECT notifyq.enqueue(
    'notifyq.http',
    jsonb_build_object('url', :'url', 'body', jsonb_build_object('order', 42)),
    run_at => now() + interval '1 second'
) AS job_id;
COMMIT;
