"""The error tree.

Infrastructure failures derive from `NotifyqError`. The job-control exceptions (`Retry`, `Snooze`,
`Discard`) are kept apart: a handler raises them on purpose to steer its own job, and they never mean
that notifyq itself failed.
"""

from __future__ import annotations

# SQLSTATEs we act on, by name.
SQLSTATE_CHECK_VIOLATION = "23514"
SQLSTATE_READ_ONLY_TRANSACTION = "25006"
SQLSTATE_UNDEFINED_TABLE = "42P01"
SQLSTATE_INVALID_PASSWORD = "28P01"
SQLSTATE_INVALID_AUTHORIZATION = "28000"
SQLSTATE_INVALID_CATALOG_NAME = "3D000"


class NotifyqError(Exception):
    """Base of every error notifyq raises itself."""


class ConfigError(NotifyqError):
    """Raised when a setting is missing or invalid; the message names the setting."""


class AppLoadError(ConfigError):
    """Raised when `app` cannot be imported or is not a Registry."""


class SchemaError(NotifyqError):
    """Raised when the database schema is older or newer than this notifyq knows."""


class DatabaseUnavailable(NotifyqError):
    """Raised when the database cannot be reached or refuses writes; callers back off and retry."""


class QueryError(NotifyqError):
    """Raised when a statement fails for a reason other than reachability (a bug or a changed schema)."""


class DatabaseConfigError(NotifyqError):
    """Raised when the database rejects us for good: bad credentials or a missing database."""


class JobControl(Exception):
    """Base of the exceptions a handler raises to steer its own job."""


class Retry(JobControl):
    """Retry this job (spending the attempt), after `delay` seconds or the task's backoff."""

    def __init__(self, reason: str = "", *, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class Snooze(JobControl):
    """Put this job back for `seconds` without spending an attempt."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"snoozed for {seconds}s")
        self.seconds = seconds


class Discard(JobControl):
    """Stop retrying: the job ends `failed` now, with `reason` kept as its error."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
