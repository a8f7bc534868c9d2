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
