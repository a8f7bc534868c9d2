"""A test app for daemons run as processes: every run records itself in `test_runs`.

Each handler inserts a row when it starts and stamps it when it ends, on its own connection (not in
the job's lease), so tests can see runs that overlapped, runs that were cut short, and which process
ran what.
"""

from __future__ import annotations

import os
import signal

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
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
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
        "INSERT INTO test_runs (job_id, attempt, pid, lease_token) VALUES ($1, $2, $3, $4)",
        job.id,
        job.attempt,
        os.getpid(),
        job.lease_token,
    )


async def _finish(job: Job) -> None:
    p = await pool()
    await p.execute(
        "UPDATE test_runs SET finished_at = clock_timestamp()"
        " WHERE job_id = $1 AND attempt = $2 AND pid = $3",
        job.id,
        job.attempt,
        os.getpid(),
    )


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
    await _start(job)
    raise RuntimeError("planned failure")


@registry.task("rec.noop")
async def noop(job: Job) -> None:
    """Does nothing: for load scenarios that measure notifyq, not the handler."""


@registry.task("rec.work")
async def work(job: Job) -> int:
    """Records its run; sleeps `seconds` (or `first_seconds` on attempt 1) in between."""
    await _start(job)
    payload = job.payload if isinstance(job.payload, dict) else {}
    seconds = (
        payload.get("first_seconds", payload.get("seconds", 0))
        if job.attempt == 1
        else payload.get("seconds", 0)
    )
    if seconds:
        await anyio.sleep(float(seconds))
    await _finish(job)
    return os.getpid()
