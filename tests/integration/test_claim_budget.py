"""The claims' byte budget (issue 12, class 6): beyond its first row, a claim takes payloads only while
those before come to less than the budget, measured as the text the daemon receives even where the
payload is stored compressed. Rows locked beyond it stay queued."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from notifyq import queries

pytestmark = pytest.mark.timeout(30)
WORKER = uuid.uuid4()
KIB = 1024


async def insert(conn: asyncpg.Connection, n: int, kib: int, compressible: bool) -> list[int]:
    pad = (
        f"repeat('0', {kib * KIB})"
        if compressible
        else f"(SELECT string_agg(md5(i::text || g::text), '') FROM generate_series(1, {kib * KIB // 32}) AS g)"
    )
    rows = await conn.fetch(
        f"INSERT INTO notifyq.jobs (task, payload) SELECT 't', jsonb_build_object('pad', {pad})"
        f" FROM generate_series(1, {n}) AS i RETURNING id"
    )
    return [r["id"] for r in rows]


async def claim(conn: asyncpg.Connection, statement: str, limit: int, budget: int) -> list[int]:
    if statement == "claim_head":
        args: tuple[object, ...] = ("default", ["t"], [None], limit, 30.0, WORKER, budget)
    else:
        args = (["default"], ["t"], [None], limit, 30.0, WORKER, [None], [None], [None], budget)
    return sorted(r["id"] for r in await conn.fetch(queries.get(statement), *args))


@pytest.mark.parametrize("compressible", [False, True], ids=["random", "compressible"])
@pytest.mark.parametrize("statement", ["claim_head", "claim_jobs"])
async def test_a_claim_stops_at_its_byte_budget(
    conn: asyncpg.Connection, statement: str, compressible: bool
) -> None:
    ids = await insert(conn, 6, 100, compressible)
    # 250 KiB: the rows before the first, second and third come to 0, 100 and 200 KiB: three rows.
    assert await claim(conn, statement, 10, 250 * KIB) == ids[:3]
    queued = await conn.fetchval("SELECT count(*) FROM notifyq.jobs WHERE state = 'queued'")
    assert queued == 3, "the rows locked beyond the budget stay queued"
    # A budget smaller than one payload still takes one row: a claim always makes progress.
    assert await claim(conn, statement, 10, 1) == ids[3:4]
    # No budget to speak of: the row limit decides.
    assert await claim(conn, statement, 1, 1 << 40) == ids[4:5]
