"""Plain data: the job a handler sees, job states, outcomes, and the typed rows the store returns."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class QueueState(enum.StrEnum):
    """How the database gauges, `notifyq status` and systemd's STATUS line count a queue's jobs:
    `scheduled` is queued with a future run_at. Also the `state` label of `notifyq_queue_jobs`."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    FAILED = "failed"


class OutcomeKind(enum.StrEnum):
    """What happened to one attempt; also the `outcome` label of the completion metric (every kind but
    UNSTARTED, which never started and so never completed)."""

    SUCCEEDED = "succeeded"
    RETRIED = "retried"  # failed, will run again after a backoff
    FAILED = "failed"  # failed, attempts spent
    DISCARDED = "discarded"  # the handler raised Discard: failed at once
    SNOOZED = "snoozed"  # the handler raised Snooze: back to the queue, attempt given back
    TIMED_OUT = "timed_out"
    RELEASED = "released"  # cancelled at the shutdown deadline: back to the queue, attempt given back
    UNSTARTED = "unstarted"  # claimed into the prefetch buffer, given back without running
    LEASE_LOST = "lease_lost"  # another daemon owns the job now: nothing written


OUTCOME_LABELS = tuple(kind.value for kind in OutcomeKind if kind is not OutcomeKind.UNSTARTED)


class ResultDropped(enum.StrEnum):
    """Why a handler's return value was not stored (the job's outcome still is); the `reason` label of
    `notifyq_results_dropped`."""

    NOT_JSON = "not_json"  # orjson cannot encode it (a set, an object, NaN)
    TOO_LARGE = "too_large"  # over outcomes.MAX_RESULT_BYTES of JSON
    NOT_STORABLE = "not_storable"  # JSON that jsonb refuses (a \u0000 in a string)


@dataclass(frozen=True, slots=True)
class Job:
    """One job as its handler sees it. `attempt` counts from 1 and includes this run. A run is not
    counted when its worker died before the database knew the handler had been called, the first time
    (`unclear_crashes` says so): the next run sees the same `attempt`.

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
    unclear_crashes: int = 0  # its worker died after its start, before its handler was known called
    snoozes: int = 0  # times a handler snoozed it before this run (snoozes give their attempt back)


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


# -- rows the store returns past its seam (maintenance, gauges, status, the CLI) ----------------------


@dataclass(frozen=True, slots=True)
class RescuedJob:
    """A job whose lease expired, put back in the queue (or failed, its attempts spent) by rescue."""

    id: int
    queue: str
    task: str
    state: str
    attempts: int
    started: bool  # False: it waited in a prefetch buffer and goes back with no attempt spent
    forgiven: bool  # started, but not known to have run, the first time: the attempt was given back


@dataclass(frozen=True, slots=True)
class OrphanGroup:
    """Queued jobs in a served queue whose task no handler here knows."""

    queue: str
    task: str
    jobs: int


@dataclass(frozen=True, slots=True)
class QueueStat:
    """One (queue, task, state) group of the database gauges' reading."""

    queue: str
    task: str
    state: str  # a QueueState value
    jobs: int
    oldest_age: float | None  # seconds since the group's oldest run_at


@dataclass(frozen=True, slots=True)
class QueueReading:
    """The database gauges' groups, as counted at `taken_at` (on the database's clock)."""

    stats: list[QueueStat]
    taken_at: datetime | None


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A daemon as it describes itself in `notifyq.workers`."""

    id: uuid.UUID
    hostname: str
    pid: int
    queues: list[str]
    tasks: list[str]
    concurrency: int
    lease_seconds: float
    schedules: list[str]  # the code schedules it declares


@dataclass(frozen=True, slots=True)
class WorkerRow(WorkerInfo):
    """A daemon that heartbeated within two of its leases."""

    running: int
    started_at: datetime
    last_seen: datetime
    seen_seconds_ago: float


@dataclass(frozen=True, slots=True)
class GaugeReading:
    """What a daemon's gauges show, read in one statement."""

    queues: QueueReading
    workers_alive: int
    served: set[tuple[str, str]]  # (queue, task) pairs some live daemon serves
    dead_tuples: int  # dead row versions in notifyq.jobs
    oldest_xact_age: float  # seconds the oldest open transaction in this database has been open
    usage: float  # how full Postgres's NOTIFY queue is, 0 to 1


@dataclass(frozen=True, slots=True)
class JobSummary:
    """A line of `notifyq jobs list`."""

    id: int
    queue: str
    task: str
    state: str
    attempts: int
    max_attempts: int | None  # None: not given; the task's, else the default, is written at its claim
    run_at: datetime
    finished_at: datetime | None
    error: str | None


@dataclass(frozen=True, slots=True)
class JobDetail:
    """Everything `notifyq jobs show` prints; payload and result are JSON text."""

    id: int
    queue: str
    task: str
    payload: str
    priority: int
    run_at: datetime
    state: str
    attempts: int
    max_attempts: int | None  # None: not given; the task's, else the default, is written at its claim
    worker_id: uuid.UUID | None
    leased_until: datetime | None
    dedup_key: str | None
    last_error: str | None
    result: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    unclear_crashes: int  # its worker died after its start, before its handler was known called
    snoozes: int  # times a handler snoozed it (each gave its attempt back)
    schedule: str | None  # the schedule whose tick made it (migration 0007), with that tick's instant
    schedule_tick: datetime | None
    backfilled: bool  # made late, by a schedule's backfill


class TickResult(enum.StrEnum):
    """What became of a schedule's tick: the `result` label of `notifyq_schedule_ticks_total`."""

    ENQUEUED = "enqueued"  # its job was made on time
    BACKFILLED = "backfilled"  # its job was made late, by the schedule's backfill
    SKIPPED = "skipped"  # skip_overlap: an earlier run was still queued or running
    MISSED = "missed"  # no daemon ran when it fell due, and it was beyond the grace and the backfill
    FAILED = "failed"  # the statement that makes its job failed (the daemon retries the tick)


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """An enabled schedule as the scheduler reads it, with the database's clock."""

    now: datetime
    name: str
    cron: str
    timezone: str
    since: datetime
    last_tick: datetime | None
    next_tick: datetime | None
    updated_at: datetime
    backfill_seconds: float
    skip_overlap: bool
    error: str | None
    enabled: bool = True
    payload_bytes: int = 2  # the payload's size as text, for the size of a backfill's statements


@dataclass(frozen=True, slots=True)
class ScheduleDetail:
    """A schedule as `notifyq schedules list|show` prints it; payload is JSON text."""

    name: str
    cron: str
    timezone: str
    queue: str
    task: str
    payload: str
    priority: int
    max_attempts: int | None
    backfill_seconds: float
    enabled: bool
    skip_overlap: bool
    source: str
    since: datetime
    last_tick: datetime | None
    next_tick: datetime | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    last_job_id: int | None
    last_job_state: str | None


@dataclass(frozen=True, slots=True)
class TickWrite:
    """What one enqueue_ticks statement did."""

    advanced: bool  # False: another daemon (or a writer) changed the row first; nothing was made
    skipped: bool  # skip_overlap found an earlier run still queued or running
    made: int  # jobs inserted (a tick whose job already exists makes none)
    locked: bool = False  # someone else held the row: nothing was done, look again soon
    made_backfilled: int = 0  # of `made`, the backfilled ones


@dataclass(frozen=True, slots=True)
class PeriodicSpec:
    """A schedule declared in code (`@registry.periodic`), validated; the daemon upserts it at start."""

    name: str
    cron: str
    timezone: str
    task: str
    payload_json: str  # the payload as JSON text
    queue: str
    priority: int
    max_attempts: int | None
    backfill: timedelta
    skip_overlap: bool
