"""The producer API for Python: `await enqueue(conn, "emails.send", {...})`.

It runs on the caller's own asyncpg connection, so the job is part of the caller's transaction: it
exists if and only if that transaction commits. It calls the same `notifyq.enqueue()` SQL function that
producers in other languages call, so validation and dedup behave the same everywhere.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass
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
    at, delay = _when(run_at, "run_at")
    body = _dumps(payload, "payload")
    job_id: int = await conn.fetchval(
        queries.get("enqueue"), task, body, queue, at, priority, dedup_key, max_attempts, delay
    )
    return job_id


@dataclass(frozen=True, slots=True)
class NewJob:
    """One job for `enqueue_many`; the fields mean what `enqueue`'s arguments mean."""

    task: str
    payload: Any = None
    queue: str = "default"
    run_at: datetime | timedelta | None = None
    priority: int = 0
    dedup_key: str | None = None
    max_attempts: int | None = None


async def enqueue_many(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, jobs: Iterable[NewJob]
) -> list[int]:
    """Enqueue many jobs in one statement, in the caller's transaction; returns their ids in input order
    (for a held dedup_key, the holder's id). A bad job fails the whole call and names its position."""
    batch = list(jobs)
    columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [], [])
    tasks, payloads, queues, run_ats, priorities, keys, attempts, run_ins = columns
    for pos, job in enumerate(batch):
        at, delay = _when(job.run_at, f"jobs[{pos}].run_at")
        try:
            payloads.append(_dumps(job.payload, f"jobs[{pos}].payload"))
        except TypeError as exc:
            raise ValueError(f"jobs[{pos}].payload: not JSON-serializable: {exc}") from None
        tasks.append(job.task)
        queues.append(job.queue)
        run_ats.append(at)
        priorities.append(job.priority)
        keys.append(job.dedup_key)
        attempts.append(job.max_attempts)
        run_ins.append(delay)
    if not batch:
        return []
    rows = await conn.fetch(queries.get("enqueue_many"), *columns)
    return [r["id"] for r in rows]


def _dumps(payload: Any, field: str) -> str:
    """The payload as JSON text. orjson writes NaN and the infinities as `null`, silently changing the
    data, where Postgres refuses them in jsonb: refuse them too, naming where they are."""
    data = orjson.dumps({} if payload is None else payload)
    if b"null" in data:  # only then can a non-finite float hide in it: the common case costs nothing more
        where = _non_finite(payload, field)
        if where is not None:
            raise ValueError(f"{where}: NaN and Infinity are not JSON; Postgres refuses them too")
    return data.decode()


def _non_finite(value: Any, path: str) -> str | None:
    """The path of the first NaN or infinite float in `value` (as orjson walks it), or None."""
    # Iterative, so that a payload nested deeper than the recursion limit cannot crash the check.
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, enum.Enum):
            item = item.value
        if isinstance(item, float):
            if not math.isfinite(item):
                return where
        elif isinstance(item, dict):
            stack.extend((v, f"{where}[{k!r}]") for k, v in reversed(list(item.items())))
        elif isinstance(item, list | tuple):
            stack.extend((v, f"{where}[{i}]") for i, v in reversed(list(enumerate(item))))
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            fields = dataclasses.fields(item)
            stack.extend((getattr(item, f.name), f"{where}.{f.name}") for f in reversed(fields))
    return None


def _when(run_at: datetime | timedelta | None, field: str) -> tuple[datetime | None, timedelta | None]:
    if isinstance(run_at, datetime) and run_at.tzinfo is None:
        raise ValueError(f"{field}: must be timezone-aware (a naive datetime is ambiguous)")
    return (
        run_at if isinstance(run_at, datetime) else None,
        run_at if isinstance(run_at, timedelta) else None,
    )


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
