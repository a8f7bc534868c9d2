"""Plain data: the job a handler sees, job states and the outcome records the completer writes."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class OutcomeKind(enum.StrEnum):
    """What happened to one attempt; also the `outcome` label of the completion metric."""

    SUCCEEDED = "succeeded"
    RETRIED = "retried"
    FAILED = "failed"
    DISCARDED = "discarded"
    SNOOZED = "snoozed"
    TIMED_OUT = "timed_out"
    RELEASED = "released"
    UNSTARTED = "unstarted"  # claimed into the prefetch buffer, given back without running
    LEASE_LOST = "lease_lost"


@dataclass(frozen=True, slots=True)
class Job:
    """One job as its handler sees it. `attempt` counts from 1 and includes this run.

    `lease_token` is unique to this attempt's claim: a handler can use it as an idempotency key for
    side effects, since a re-run after a lost lease gets a new one."""

    id: int
    queue: str
    task: str
    payload: Any
    attempt: int
    max_attempts: int
    priority: int
    run_at: datetime
    created_at: datetime
    lease_token: uuid.UUID


@dataclass(frozen=True, slots=True)
class Claim:
    """A job together with the lease this daemon holds on it."""

    job: Job
    lease_token: uuid.UUID
    waited: float = 0.0  # seconds from run_at (runnable) to the claim, on the database clock
    decode_error: str | None = None  # set when the stored payload cannot be turned into Python
    size: int = 0  # the payload's length as JSON text, which bounds the prefetch buffer's memory


@dataclass(frozen=True, slots=True)
class Outcome:
    """A row update for the completer. `state` is the job's next state."""

    job_id: int
    lease_token: uuid.UUID
    kind: OutcomeKind
    state: JobState
    delay: float = 0.0
    refund: int = 0
    error: str | None = None
    result: str | None = None
    queue: str = field(default="", compare=False)
    task: str = field(default="", compare=False)
