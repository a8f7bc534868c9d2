-- The HTTP API (notifyq/api/app.py): what it runs beyond the statements the CLI shares.

-- name: api_job_created :one
-- In the transaction that just called notifyq.enqueue(): whether job $1 is that transaction's row (new)
-- or the older holder of its dedup key.
SELECT j.xmin::text = pg_current_xact_id()::xid::text AS created FROM notifyq.jobs AS j WHERE j.id = $1::bigint;

-- name: api_put_schedule :exec
-- Create or replace a schedule by name, as notifyq.schedule() does for any language.
SELECT notifyq.schedule($1::text, $2::text, $3::text, $4::jsonb, $5::text, $6::text, $7::int, $8::int,
                        make_interval(secs => $9::float8), $10::boolean, $11::boolean);

-- name: api_delete_schedule :exec
DELETE FROM notifyq.schedules AS s WHERE s.name = $1::text;
