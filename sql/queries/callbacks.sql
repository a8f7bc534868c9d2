-- Callbacks (migration 0008): the disabled endpoints.

-- name: endpoint_disabled :many
-- Why the endpoint is disabled; no row while it is enabled.
SELECT e.reason FROM notifyq.disabled_endpoints AS e WHERE e.name = $1::text;

-- name: disable_endpoint :exec
-- A 410 Gone from it: the first reason stays.
INSERT INTO notifyq.disabled_endpoints (name, reason) VALUES ($1::text, left($2::text, 1000))
ON CONFLICT (name) DO NOTHING;

-- name: enable_endpoint :many
-- `notifyq endpoints enable NAME`; returns the name, or no row when it was not disabled.
DELETE FROM notifyq.disabled_endpoints AS e WHERE e.name = $1::text RETURNING e.name;

-- name: list_disabled_endpoints :many
SELECT e.name, e.reason, e.disabled_at FROM notifyq.disabled_endpoints AS e ORDER BY e.name;
