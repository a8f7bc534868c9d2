-- The migration ledger. Migrations run in one transaction under an advisory transaction lock (class
-- 7244, apart from the wake-up class 7243), so two `notifyq migrate` at once apply each file once.

-- name: migrate_lock :exec
SELECT pg_advisory_xact_lock(7244, 0);

-- name: ledger_bootstrap :exec
CREATE SCHEMA IF NOT EXISTS notifyq;
CREATE TABLE IF NOT EXISTS notifyq.schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- name: ledger_exists :one
SELECT to_regclass('notifyq.schema_migrations') IS NOT NULL AS present;

-- name: ledger_applied :many
SELECT version, name, checksum FROM notifyq.schema_migrations ORDER BY version;

-- name: ledger_record :exec
INSERT INTO notifyq.schema_migrations (version, name, checksum) VALUES ($1::int, $2::text, $3::text);
