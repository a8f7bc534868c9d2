"""A test app for daemons run as processes: every run records itself in `test_runs`.

Each handler inserts a row when it starts and stamps it when it ends, on its own connection (not in
the job's lease), so tests can see runs that overlapped, runs that were cut short, and which process
ran what. `finished_at` is stamped only when the handler returns; `ended_at` whenever the run ends in
this process (returned, raised, or cancelled, with `cancelled` set); a run that has neither ended with
its process (SIGKILL). While the database is away the end cannot be written there, so every end also
goes to a journal file of this process (in NOTIFYQ_RECORDER_JOURNAL, when set), which the checker reads;
a failed write of the end never fails the job.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import asyncpg

from notifyq import Backoff, Job, Registry

registry = Registry()
_pool: asyncpg.Pool | None = None
_pool_lock = anyio.Lock()

SCHEMA = """
CREATE TABLE IF NOT EXISTS test_runs (
    job_id bigint NOT NULL,
    attempt int NOT NULL,
    pid int NOT NULL,
    lease_token uuid,
    run_at timestamptz,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    ended_at timestamptz,
    cancelled boolean NOT NULL DEFAULT false
)
"""


async def pool() -> asyncpg.Pool:
    global _pool
    async with _pool_lock:  # many handlers start at once; they must share one pool
        if _pool is None:
            _pool = await asyncpg.create_pool(os.environ["NOTIFYQ_DSN"], min_size=0, max_size=4)
    return _pool


async def _start(job: Job) -> None:
    p = await pool()
    await p.execute(
        "INSERT INTO test_runs (job_id, attempt, pid, lease_token, run_at) VALUES ($1, $2, $3, $4, $5)",
        job.id,
        job.attempt,
        os.getpid(),
        job.lease_token,
        job.run_at,
    )


async def _end(job: Job, *, returned: bool = False, cancelled: bool = False) -> None:
    # Any failure of this bookkeeping (the database is the fault under test) must not fail the job.
    with anyio.move_on_after(1), contextlib.suppress(Exception):
        await _write_end(job, returned=returned, cancelled=cancelled)
    folder = os.environ.get("NOTIFYQ_RECORDER_JOURNAL")
    if folder:  # written last: the run has ended once this line exists
        entry = {"job_id": job.id, "token": str(job.lease_token), "pid": os.getpid(), "ended": time.time()}
        with open(os.path.join(folder, f"{os.getpid()}.jsonl"), "a") as journal:
            journal.write(json.dumps({**entry, "returned": returned, "cancelled": cancelled}) + "\n")


async def _write_end(job: Job, *, returned: bool, cancelled: bool) -> None:
    p = await pool()
    await p.execute(
        "UPDATE test_runs SET ended_at = clock_timestamp(), cancelled = $4,"
        " finished_at = CASE WHEN $5 THEN clock_timestamp() END"
        " WHERE job_id = $1 AND lease_token = $2 AND pid = $3",
        job.id,
        job.lease_token,
        os.getpid(),
        cancelled,
        returned,
    )


@asynccontextmanager
async def recorded(job: Job) -> AsyncIterator[None]:
    """Record the run's start, and how it ended: returned, raised, or cancelled. A start whose reply
    was lost may still have been written, so its failure is an end too."""
    try:
        await _start(job)
        yield
    except anyio.get_cancelled_exc_class():
        await _end_shielded(job, cancelled=True)
        raise
    except BaseException:
        await _end_shielded(job)
        raise
    await _end(job, returned=True)


async def _end_shielded(job: Job, *, cancelled: bool = False) -> None:
    """Record the end even while cancelled."""
    with anyio.CancelScope(shield=True):
        await _end(job, cancelled=cancelled)


@registry.task("rec.poison", max_attempts=3)
async def poison(job: Job) -> None:
    """Kills its own process, every time."""
    await _start(job)
    os.kill(os.getpid(), signal.SIGKILL)


@registry.task(
    "rec.fail", max_attempts=3, backoff=Backoff(base_seconds=1.0, factor=2.0, cap_seconds=60, jitter=0.5)
)
async def fail(job: Job) -> None:
    """Records its run, then fails: for retry-storm timing."""
    async with recorded(job):
        raise RuntimeError("planned failure")


@registry.task("rec.noop")
async def noop(job: Job) -> None:
    """Does nothing: for load scenarios that measure notifyq, not the handler."""


@registry.task("rec.work")
async def work(job: Job) -> int:
    """Records its run; sleeps `seconds` (or `first_seconds` on its first run) in between."""
    payload = job.payload if isinstance(job.payload, dict) else {}
    first = job.attempt == 1 and job.unclear_crashes == 0  # a forgiven crash leaves attempt at 1
    seconds = payload.get("first_seconds", payload.get("seconds", 0)) if first else payload.get("seconds", 0)
    async with recorded(job):
        if seconds:
            await anyio.sleep(float(seconds))
    return os.getpid()
