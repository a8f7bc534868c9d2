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

-- The HTTP API's tokens (migration 0008).

-- name: token_by_hash :many
-- The token whose SHA-256 is $1, unless revoked.
SELECT t.name, t.token_hash, t.queues, t.can_write
FROM notifyq.api_tokens AS t
WHERE t.token_hash = $1::bytea AND t.revoked_at IS NULL;

-- name: create_token :many
-- No row when an active token has the name; a revoked one's row is taken over (its hash replaced, so
-- the revoked token stays refused), so that "revoke, then create again" renews a token under its name.
INSERT INTO notifyq.api_tokens AS t (name, token_hash, queues, can_write)
VALUES ($1::text, $2::bytea, $3::text[], $4::boolean)
ON CONFLICT (name) DO UPDATE
    SET token_hash = EXCLUDED.token_hash, queues = EXCLUDED.queues, can_write = EXCLUDED.can_write,
        created_at = now(), revoked_at = NULL
    WHERE t.revoked_at IS NOT NULL
RETURNING t.name;

-- name: list_tokens :many
SELECT t.name, t.queues, t.can_write, t.created_at, t.revoked_at FROM notifyq.api_tokens AS t ORDER BY t.name;

-- name: revoke_token :many
UPDATE notifyq.api_tokens AS t SET revoked_at = now()
WHERE t.name = $1::text AND t.revoked_at IS NULL
RETURNING t.name;
