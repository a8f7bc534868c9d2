-- notifyq 0008: callbacks. The built-in task `notifyq.http` calls apps back over HTTP; a 410 Gone from
-- a configured endpoint (`[endpoints.NAME]` in the daemons' settings) disables it for every daemon until
-- an operator enables it again (`notifyq endpoints enable NAME`), as webhook senders do: the receiver
-- said the address is gone for good, and every further try would fail the same way.
--
-- Only the state lives here: an endpoint's URL, secret and headers are settings, never rows, so that no
-- role that may read the database reads a secret.
CREATE TABLE notifyq.disabled_endpoints (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    reason      text NOT NULL CHECK (char_length(reason) <= 1000),
    disabled_at timestamptz NOT NULL DEFAULT now()
);

-- The HTTP API's bearer tokens (`notifyq tokens create NAME --queues a,b [--write]`). Only a token's
-- SHA-256 is kept: the token itself is printed once, when it is made. A token reaches the jobs and the
-- schedules of its queues (`*`: every queue), and writes only when `can_write`.
CREATE TABLE notifyq.api_tokens (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    token_hash  bytea NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    queues      text[] NOT NULL CHECK (cardinality(queues) BETWEEN 1 AND 100),
    can_write   boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
