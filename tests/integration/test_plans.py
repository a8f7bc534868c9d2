"""Query plans of the hot statements, with fresh and with stale statistics."""

from __future__ import annotations

import asyncpg
import pytest

from notifyq import queries

pytestmark = pytest.mark.timeout(60)

WORKER = "00000000-0000-0000-0000-000000000001"
CLAIM_ARGS = (
    "'{default}'",
    "'{t}'",
    "'{NULL}'",
    "50",
    "30",
    f"'{WORKER}'",
    "'{NULL}'",
    "'{NULL}'",
    "'{NULL}'",
    str(1 << 40),
)


async def plan_of(conn: asyncpg.Connection, name: str, *args: str) -> str:
    await conn.execute(f"PREPARE q AS {queries.get(name)}")
    try:
        rows = await conn.fetch(f"EXPLAIN (COSTS OFF) EXECUTE q({', '.join(args)})")
    finally:
        await conn.execute("DEALLOCATE q")
    return "\n".join(r[0] for r in rows)


def sorts_only_the_claimed_rows(plan: str) -> bool:
    """The only sort allowed is the byte budget's, over the rows the claim locked (at most its LIMIT):
    never one over the runnable rows."""
    lines = plan.splitlines()
    sorts = [i for i, line in enumerate(lines) if line.strip().startswith("->  Sort")]
    return all(any("CTE Scan on locked" in line for line in lines[i + 1 : i + 3]) for i in sorts)


@pytest.mark.parametrize("analyzed", [False, True], ids=["stale_stats", "analyzed"])
async def test_claim_reads_only_the_claim_index(conn: asyncpg.Connection, analyzed: bool) -> None:
    # Right after a bulk insert, before autoanalyze, the planner once took jobs_schedule_idx for the
    # claim and sorted every runnable row on each claim (a 100,000-job drain ran at 1,500 jobs/s).
    await conn.execute("INSERT INTO notifyq.jobs (task) SELECT 't' FROM generate_series(1, 50000)")
    if analyzed:
        await conn.execute("ANALYZE notifyq.jobs")
    claim_plan = await plan_of(conn, "claim_jobs", *CLAIM_ARGS)
    assert "jobs_claim_idx" in claim_plan and "jobs_schedule_idx" not in claim_plan, claim_plan
    assert "Seq Scan" not in claim_plan, claim_plan
    head_plan = await plan_of(conn, "claim_head", "'default'", *CLAIM_ARGS[1:6], CLAIM_ARGS[9])
    assert "jobs_claim_idx" in head_plan and "jobs_schedule_idx" not in head_plan, head_plan
    assert "Seq Scan" not in head_plan and sorts_only_the_claimed_rows(head_plan), head_plan
    timer = await plan_of(conn, "next_run_delay", "'{default}'", "'{t}'")
    assert "jobs_schedule_idx" in timer, timer

    await conn.execute(f"PREPARE q AS {queries.get('claim_jobs')}")
    try:
        rows = await conn.fetch(f"EXPLAIN (ANALYZE, COSTS OFF) EXECUTE q({', '.join(CLAIM_ARGS)})")
    finally:
        await conn.execute("DEALLOCATE q")
    # From the head, the same-priority branch has no position and the scan from the start is the one read.
    assert any("jobs_claim_idx" in r[0] and "actual" in r[0] for r in rows)


async def claim(
    conn: asyncpg.Connection, n: int, after: tuple[object, object, object]
) -> list[asyncpg.Record]:
    return await conn.fetch(
        queries.get("claim_jobs"),
        ["a", "b"],
        ["t"],
        [None],
        n,
        30.0,
        WORKER,
        *([v, None] for v in after),
        1 << 40,
    )


async def test_claim_continues_after_a_position_and_takes_lower_priorities_after_it(
    conn: asyncpg.Connection,
) -> None:
    await conn.execute(
        "INSERT INTO notifyq.jobs (task, queue, priority, run_at)"
        " SELECT 't', q, p, now() - make_interval(secs => 100 - i)"
        " FROM unnest(ARRAY['a', 'b']) AS q, unnest(ARRAY[5, 0]) AS p, generate_series(1, 3) AS i"
    )
    jobs = await conn.fetch(
        "SELECT id, queue, priority, run_at FROM notifyq.jobs ORDER BY queue, priority DESC, run_at, id"
    )
    in_a = [j for j in jobs if j["queue"] == "a"]
    # Queue a continues after its second row (priority 5); queue b has no position and starts at its head.
    position = (in_a[1]["priority"], in_a[1]["run_at"], in_a[1]["id"])
    got = await claim(conn, 20, position)
    ids = {r["id"] for r in got}
    assert in_a[0]["id"] not in ids and in_a[1]["id"] not in ids  # before the position: left for later
    assert {j["id"] for j in in_a[2:]} <= ids  # the rest of priority 5, then priority 0
    assert {j["id"] for j in jobs if j["queue"] == "b"} <= ids
    assert len(got) == 10
    # From the head, the two rows before the position are found.
    again = await claim(conn, 20, (None, None, None))
    assert {r["id"] for r in again} == {in_a[0]["id"], in_a[1]["id"]}


async def test_claim_head_takes_the_same_rows_in_the_same_order_as_claim_jobs(
    conn: asyncpg.Connection,
) -> None:
    # Priorities, run_ats (some in the future), a task without a handler and another queue, shuffled ids.
    await conn.execute(
        "INSERT INTO notifyq.jobs (task, queue, priority, run_at)"
        " SELECT CASE WHEN i % 7 = 0 THEN 'other' ELSE 't' END, CASE WHEN i % 5 = 0 THEN 'b' ELSE 'a' END,"
        " (i * 37) % 4, now() + make_interval(secs => ((i * 53) % 40) - 30)"
        " FROM generate_series(1, 400) AS i"
    )
    order = []
    tx = conn.transaction()
    await tx.start()
    for _ in range(6):  # claim_jobs from the head, batch after batch, then undo
        rows = await conn.fetch(
            queries.get("claim_jobs"), ["a"], ["t"], [None], 25, 30.0, WORKER, [None], [None], [None], 1 << 40
        )
        order.append(sorted((-r["priority"], r["run_at"], r["id"]) for r in rows))
    await tx.rollback()
    for expected in order:
        rows = await conn.fetch(queries.get("claim_head"), "a", ["t"], [None], 25, 30.0, WORKER, 1 << 40)
        assert sorted((-r["priority"], r["run_at"], r["id"]) for r in rows) == expected
        assert {r["queue"] for r in rows} <= {"a"} and {r["task"] for r in rows} <= {"t"}
    assert sum(len(batch) for batch in order) > 100  # the runnable rows of queue a, not all 400
