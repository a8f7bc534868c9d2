"""Query plans of the hot statements, with fresh and with stale statistics."""

from __future__ import annotations

import asyncpg
import pytest

from notifyq import queries

pytestmark = pytest.mark.timeout(60)

WORKER = "00000000-0000-0000-0000-000000000001"


async def plan_of(conn: asyncpg.Connection, name: str, *args: str) -> str:
    await conn.execute(f"PREPARE q AS {queries.get(name)}")
    try:
        rows = await conn.fetch(f"EXPLAIN (COSTS OFF) EXECUTE q({', '.join(args)})")
    finally:
        await conn.execute("DEALLOCATE q")
    return "\n".join(r[0] for r in rows)


@pytest.mark.parametrize("analyzed", [False, True], ids=["stale_stats", "analyzed"])
async def test_claim_reads_only_the_claim_index(conn: asyncpg.Connection, analyzed: bool) -> None:
    # Right after a bulk insert, before autoanalyze, the planner once took jobs_schedule_idx for the
    # claim and sorted every runnable row on each claim (a 100,000-job drain ran at 1,500 jobs/s).
    await conn.execute("INSERT INTO notifyq.jobs (task) SELECT 't' FROM generate_series(1, 50000)")
    if analyzed:
        await conn.execute("ANALYZE notifyq.jobs")
    claim = await plan_of(conn, "claim_jobs", "'{default}'", "'{t}'", "'{NULL}'", "50", "30", f"'{WORKER}'")
    assert "jobs_claim_idx" in claim and "jobs_schedule_idx" not in claim and "Seq Scan" not in claim, claim
    timer = await plan_of(conn, "next_run_delay", "'{default}'", "'{t}'")
    assert "jobs_schedule_idx" in timer, timer
