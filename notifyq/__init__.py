"""notifyq: Postgres as your job queue."""

from notifyq.client import NewJob, cancel, enqueue, enqueue_many
from notifyq.context import Context
from notifyq.errors import Discard, NotifyqError, Retry, Snooze
from notifyq.models import Job, JobState
from notifyq.registry import Registry
from notifyq.retry import Backoff

__all__ = [
    "Backoff",
    "Context",
    "Discard",
    "Job",
    "JobState",
    "NewJob",
    "NotifyqError",
    "Registry",
    "Retry",
    "Snooze",
    "cancel",
    "enqueue",
    "enqueue_many",
]
