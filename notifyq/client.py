"""The producer API for Python: `await enqueue(conn, "emails.send", {...})`.

It runs on the caller's own asyncpg connection, so the job is part of the caller's transaction: it
exists if and only if that transaction commits. It calls the same `notifyq.enqueue()` SQL function that
producers in other languages call, so validation and dedup behave the same everywhere.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson

from notifyq import queries


async def enqueue(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    task: str,
    payload: Any = None,
    *,
    queue: str = "default",
    run_at: datetime | timedelta | None = None,
    priority: int = 0,
    dedup_key: str | None = None,
    max_attempts: int | None = None,
) -> int:
    """Enqueue one job and return its id (the existing job's id when `dedup_key` is already held).

    `run_at` is an aware datetime, or a timedelta counted from the database's clock.
    """
    if isinstance(run_at, datetime) and run_at.tzinfo is None:
        raise ValueError("run_at must be timezone-aware (a naive datetime is ambiguous)")
    at = run_at if isinstance(run_at, datetime) else None
    delay = run_at if isinstance(run_at, timedelta) else None
    body = orjson.dumps({} if payload is None else payload).decode()
    job_id: int = await conn.fetchval(
        queries.get("enqueue"), task, body, queue, at, priority, dedup_key, max_attempts, delay
    )
    return job_id


async def cancel(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, job_id: int) -> str | None:
    """Cancel a job that has not started yet. Returns its state afterwards ('cancelled' on success; a
    running or finished job keeps its state), or None when no such job exists."""
    state: str | None = await conn.fetchval(queries.get("cancel_job"), job_id)
    return state


async def retry(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, job_id: int) -> str | None:
    """Put a failed or cancelled job back in the queue with fresh attempts. Returns its state
    afterwards ('queued' on success), or None when no such job exists."""
    state: str | None = await conn.fetchval(queries.get("retry_job"), job_id)
    return state
