"""Dedup keys: held while the job holding them is queued or running, free again once it has finished,
through every producer path (SQL enqueue, SQL enqueue_many, Python enqueue and enqueue_many)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from notifyq import NewJob, enqueue, enqueue_many, queries

pytestmark = pytest.mark.timeout(30)
WORKER = uuid.UUID(int=7)


async def _via_sql(conn: asyncpg.Connection, key: str) -> int:
    job_id: int = await conn.fetchval("SELECT notifyq.enqueue('t', dedup_key => $1)", key)
    return job_id


async def _via_sql_many(conn: asyncpg.Connection, key: str) -> int:
    job_id: int = await conn.fetchval(
        "SELECT id FROM notifyq.enqueue_many(ARRAY['t'], dedup_keys => ARRAY[$1])", key
    )
    return job_id


async def _via_python(conn: asyncpg.Connection, key: str) -> int:
    return await enqueue(conn, "t", dedup_key=key)


async def _via_python_many(conn: asyncpg.Connection, key: str) -> int:
    [job_id] = await enqueue_many(conn, [NewJob("t", dedup_key=key)])
    return job_id


Path = Callable[[asyncpg.Connection, str], Awaitable[int]]
PATHS: list[Path] = [_via_sql, _via_sql_many, _via_python, _via_python_many]


async def _claim(conn: asyncpg.Connection) -> asyncpg.Record:
    [row] = await conn.fetch(queries.get("claim_head"), "default", ["t"], [None], 1, 30.0, WORKER, 1 << 40)
    return row


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.__name__)
async def test_a_queued_or_running_holder_keeps_its_key(conn: asyncpg.Connection, path: Path) -> None:
    holder = await path(conn, "k")
    assert await path(conn, "k") == holder, "queued holder"
    claimed = await _claim(conn)
    assert claimed["id"] == holder
    assert await path(conn, "k") == holder, "running holder"
    assert await conn.fetchval("SELECT count(*) FROM notifyq.jobs") == 1
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute("INSERT INTO notifyq.jobs (task, dedup_key) VALUES ('t', 'k')")


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.__name__)
@pytest.mark.parametrize("final", ["succeeded", "failed", "cancelled"])
async def test_a_finished_holder_frees_its_key(conn: asyncpg.Connection, path: Path, final: str) -> None:
    await conn.execute("SET statement_timeout = '5s'")  # enqueue loops while a key looks held yet free
    holder = await path(conn, "k")
    claimed = await _claim(conn)
    await conn.fetch(
        queries.get("record_outcomes"),
        [holder],
        [claimed["lease_token"]],
        [final],
        [0.0],
        [0],
        [None],
        [None],
        [0],
    )
    fresh = await path(conn, "k")
    assert fresh != holder
    assert await conn.fetchval("SELECT count(*) FROM notifyq.jobs WHERE dedup_key = 'k'") == 2
