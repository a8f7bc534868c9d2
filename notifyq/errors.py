"""The error tree.

Infrastructure failures derive from `NotifyqError`. The job-control exceptions (`Retry`, `Snooze`,
`Discard`) are kept apart: a handler raises them on purpose to steer its own job, and they never mean
that notifyq itself failed.
"""

from __future__ import annotations

import math
from datetime import timedelta

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


class StatementTimeout(DatabaseUnavailable):
    """Raised when a statement ran past its timeout: the database is slow, or the work too big for it (a
    claim of large payloads shrinks after one)."""


class LockUnavailable(DatabaseUnavailable):
    """Raised when a statement gave up waiting for a lock (lock_timeout, NOWAIT: SQLSTATE 55P03): another
    session holds the row or table; the same statement may pass once it lets go."""


class QueryError(NotifyqError):
    """Raised when a statement fails for a reason other than reachability (a bug or a changed schema).
    `sqlstate` is the server's code when it gave one (class 22 or 23: a value the database refused)."""

    sqlstate: str | None = None


class DatabaseConfigError(NotifyqError):
    """Raised when the database rejects us for good: bad credentials or a missing database."""


class JobControl(Exception):
    """Base of the exceptions a handler raises to steer its own job. Their arguments are checked when
    they are made, so a bad one fails in the handler, as a failure of that attempt, with a message
    naming the argument and its limit."""


# Far enough for any sane retry or snooze; a timestamptz would overflow much later.
MAX_DELAY_SECONDS = 10 * 365 * 86400.0


def _seconds(name: str, value: object) -> float:
    """A delay in seconds: a finite number (or timedelta) from 0 to MAX_DELAY_SECONDS."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds or a timedelta (got {type(value).__name__})")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not 0 <= seconds <= MAX_DELAY_SECONDS:  # NaN fails this too
        raise ValueError(f"{name} must be between 0 and {MAX_DELAY_SECONDS:.0f} seconds (got {value!r})")
    return seconds


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str (got {type(value).__name__})")
    return value


class Retry(JobControl):
    """Retry this job (spending the attempt), after `delay` seconds or the task's backoff."""

    def __init__(self, reason: str = "", *, delay: float | timedelta | None = None) -> None:
        self.reason = _text("Retry(reason)", reason)
        self.delay = None if delay is None else _seconds("Retry(delay)", delay)
        super().__init__(self.reason)


class Snooze(JobControl):
    """Put this job back for `seconds` without spending an attempt."""

    def __init__(self, seconds: float | timedelta) -> None:
        self.seconds = _seconds("Snooze(seconds)", seconds)
        super().__init__(f"snoozed for {self.seconds}s")


class Discard(JobControl):
    """Stop retrying: the job ends `failed` now, with `reason` kept as its error."""

    def __init__(self, reason: str = "") -> None:
        self.reason = _text("Discard(reason)", reason)
        super().__init__(self.reason)
