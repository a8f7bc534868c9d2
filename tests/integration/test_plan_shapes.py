"""Every hot statement keeps a plan whose cost follows its batch, whatever the statistics say.

Production runs autovacuum, which ANALYZEs the jobs table at any moment: while it is empty, on a backlog
with nothing running, beside a million finished rows. Each test puts the table in one such state, runs
ANALYZE, then changes what is running (statistics now stale, as between two autoanalyzes) and asks for
the plan of every hot statement, custom and generic (asyncpg prepares each statement once; after five
runs Postgres may switch to a generic plan, made without the parameters' values).

A plan may read `notifyq.jobs` only
- by id on the primary key (an Index Cond on id: a lookup per batch row), or
- through the partial index named for that statement (claims, rescue, timer, retention, gauges),
never by a sequential scan, and never through a partial index a batch lookup does not need (the
O(running x batch) nested loop and the hash over every running row of the past).

And a nested loop must look each outer row up through an index: one whose inner side is a scan of a
CTE, a function or a materialized list compares every outer row with every inner one. Estimating one
row where a batch has 500 (a `leased_until IS NOT NULL` on a table analyzed while nothing ran), the
planner chose exactly that for the completions: 250,000 comparisons per batch, the drain at half speed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from notifyq import queries

pytestmark = pytest.mark.timeout(120)

WORKER = uuid.UUID("00000000-0000-0000-0000-00000000000a")
BATCH = 300  # a claim of a grown prefetch buffer, and the running jobs of a busy daemon
PKEY = "jobs_pkey"

# Which indexes each statement may read jobs through besides the primary key (by id).
ALLOWED: dict[str, set[str]] = {
    "claim_head": {"jobs_claim_idx"},
    "claim_jobs": {"jobs_claim_idx"},
    "begin_jobs": set(),
    "complete_succeeded": set(),
    "record_outcomes": set(),
    "extend_leases": set(),
    # Rescue looks at running rows only, once per maintenance turn: at most the fleet's concurrency.
    "rescue_expired": {"jobs_running_idx"},
    "next_run_delay": {"jobs_schedule_idx"},
    "prune_finished": {"jobs_finished_idx"},
    # The gauges' count (migration 0006): each state through its partial index, never the finished rows.
    "count_queues": {"jobs_claim_idx", "jobs_schedule_idx", "jobs_running_idx", "jobs_failed_idx"},
    # A schedule's tick (migration 0007): skip_overlap looks for its live run, never its retained history.
    "enqueue_ticks": {"jobs_schedule_live_idx"},
}


def literal(value: Any) -> str:
    """A SQL literal for EXPLAIN EXECUTE: arrays as '{...}' text, NULL, numbers and text."""
    if value is None:
        return "NULL"
    if isinstance(value, list):
        inner = ",".join("NULL" if v is None else f'"{v}"' for v in value)
        return f"'{{{inner}}}'"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def scans_of_jobs(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every plan node that reads notifyq.jobs (a heap scan, or a bitmap index scan under one)."""
    kind = node.get("Node Type", "")
    if (node.get("Relation Name") == "jobs" and kind.endswith("Scan")) or kind == "Bitmap Index Scan":
        yield node
    for child in node.get("Plans", []):
        yield from scans_of_jobs(child)
    for init in node.get("InitPlan", []):
        yield from scans_of_jobs(init)


def nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from nodes(child)


def unindexed_loops(plan: dict[str, Any]) -> Iterator[str]:
    """Nested loops whose inner side reads no index: O(outer x inner)."""
    for node in nodes(plan):
        if node.get("Node Type") != "Nested Loop":
            continue
        inner = next(c for c in node["Plans"] if c.get("Parent Relationship") == "Inner")
        kinds = [n["Node Type"] for n in nodes(inner)]
        indexed = any(
            n["Node Type"] in {"Index Scan", "Index Only Scan", "Bitmap Index Scan"} and "Index Cond" in n
            for n in nodes(inner)
        )
        if not indexed:
            yield f"Nested Loop over {' / '.join(kinds)}"


def problems(name: str, plan: dict[str, Any]) -> list[str]:
    found = list(unindexed_loops(plan))
    for scan in scans_of_jobs(plan):
        kind = scan["Node Type"]
        index = scan.get("Index Name")
        if kind == "Bitmap Heap Scan":
            continue  # judged by its Bitmap Index Scans
        if kind in {"Seq Scan", "Sample Scan", "Tid Scan"} or index is None:
            found.append(f"{kind} on jobs")
        elif index == PKEY:
            if "id" not in scan.get("Index Cond", ""):
                found.append(f"{kind} on {PKEY} without a lookup by id")
        elif index not in ALLOWED[name]:
            found.append(f"{kind} on {index}")
    return found


async def function_body(conn: asyncpg.Connection, name: str) -> str:
    """A SQL function's live body, with its SET clauses applied to this session (the gauges' count is a
    function so that it can turn sequential scans off for itself alone)."""
    row = await conn.fetchrow(
        "SELECT p.prosrc, p.proconfig FROM pg_proc AS p WHERE p.oid = $1::regprocedure", f"notifyq.{name}()"
    )
    for setting in row["proconfig"] or []:
        key, value = setting.split("=", 1)
        await conn.execute(f"SET {key} = '{value}'")
    return str(row["prosrc"])


async def plan(conn: asyncpg.Connection, name: str, args: list[Any], mode: str) -> dict[str, Any]:
    await conn.execute(f"SET plan_cache_mode = {mode}")
    sql = queries.get(name) if name in queries.load() else await function_body(conn, name)
    await conn.execute(f"PREPARE q AS {sql}")
    try:
        shown = f"({', '.join(literal(a) for a in args)})" if args else ""
        text = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE q{shown}")
    finally:
        await conn.execute("DEALLOCATE q")
        await conn.execute("RESET ALL")
    result: dict[str, Any] = json.loads(text)[0]["Plan"]
    return result


async def claim(conn: asyncpg.Connection, n: int, queue: str = "default") -> list[asyncpg.Record]:
    return await conn.fetch(queries.get("claim_head"), queue, ["t"], [None], n, 300.0, WORKER, 1 << 40)


async def statements(conn: asyncpg.Connection, queue: str = "default") -> dict[str, list[Any]]:
    """Each hot statement with the arguments a daemon would send now: its running jobs as the batch."""
    running = await conn.fetch(
        "SELECT id, lease_token FROM notifyq.jobs WHERE state = 'running' ORDER BY id LIMIT $1", BATCH
    )
    ids = [r["id"] for r in running]
    tokens = [str(r["lease_token"]) for r in running]
    queues = [queue]
    n = len(ids)
    return {
        "claim_head": [queue, ["t"], [None], BATCH, 300.0, str(WORKER), 1 << 40],
        "claim_jobs": [queues, ["t"], [None], BATCH, 300.0, str(WORKER), [None], [None], [None], 1 << 40],
        "begin_jobs": [ids, tokens, str(WORKER), None],
        "complete_succeeded": [ids, tokens],
        "record_outcomes": [ids, tokens, ["failed"] * n, [0.0] * n, [0] * n, ["boom"] * n, [None] * n, [0] * n],
        "extend_leases": [ids, tokens, 300.0, str(WORKER), "host", 1, queues, ["t"], BATCH, None, []],
        "rescue_expired": [100, ids, tokens],
        "next_run_delay": [queues, ["t"]],
        "prune_finished": [3600.0, 1000],
        "count_queues": [],
        "enqueue_ticks": [
            "s", None, "2026-06-01 00:00:00+00", "2026-06-01 00:01:00+00", None, ["2026-06-01 00:01:00+00"], [False]
        ],
    }


async def assert_batch_plans(conn: asyncpg.Connection, state: str, queue: str = "default") -> None:
    failures = []
    for name, args in (await statements(conn, queue)).items():
        for mode in ("force_custom_plan", "force_generic_plan"):
            shown = await plan(conn, name, args, mode)
            for problem in problems(name, shown):
                failures.append(f"{state}: {name} ({mode.split('_')[1]}): {problem}")
    assert not failures, "\n".join(failures)


async def backlog(conn: asyncpg.Connection, jobs: int, queues: int = 1) -> None:
    await conn.execute(
        "INSERT INTO notifyq.jobs (task, queue)"
        " SELECT 't', CASE WHEN $2 = 1 THEN 'default' ELSE 'q' || (i % $2) END FROM generate_series(1, $1) AS i",
        jobs,
        queues,
    )


async def retained(conn: asyncpg.Connection, jobs: int) -> None:
    """Finished rows as retention keeps them (written directly: the guard triggers are for producers)."""
    await conn.execute("SET session_replication_role = replica")
    try:
        await conn.execute(
            "INSERT INTO notifyq.jobs (task, state, attempts, max_attempts, run_at, started_at, finished_at)"
            " SELECT 't', 'succeeded', 1, 20, now() - interval '1 day', now() - interval '1 day',"
            "        now() - make_interval(secs => i * 0.5)"
            " FROM generate_series(1, $1) AS i",
            jobs,
        )
    finally:
        await conn.execute("RESET session_replication_role")


async def test_plans_after_an_analyze_of_the_empty_table(conn: asyncpg.Connection) -> None:
    await conn.execute("ANALYZE notifyq.jobs")
    await backlog(conn, 20_000)
    await claim(conn, BATCH)
    await assert_batch_plans(conn, "analyzed empty, then 20,000 queued and 300 running")


async def test_plans_after_an_analyze_of_a_backlog_with_nothing_running(conn: asyncpg.Connection) -> None:
    await backlog(conn, 20_000)
    await conn.execute("ANALYZE notifyq.jobs")
    await claim(conn, BATCH)
    await claim(conn, BATCH)
    await assert_batch_plans(conn, "analyzed on 20,000 queued, then 600 running")


async def test_plans_after_an_analyze_with_hundreds_running(conn: asyncpg.Connection) -> None:
    await backlog(conn, 20_000)
    for _ in range(3):
        await claim(conn, BATCH)
    await conn.execute("ANALYZE notifyq.jobs")
    await assert_batch_plans(conn, "analyzed with 900 running")


async def test_plans_beside_a_million_retained_finished_rows(conn: asyncpg.Connection) -> None:
    await retained(conn, 1_000_000)
    await backlog(conn, 20_000)
    await conn.execute("ANALYZE notifyq.jobs")
    await claim(conn, BATCH)
    await assert_batch_plans(conn, "analyzed on 1,000,000 succeeded and 20,000 queued, then 300 running")


async def test_plans_with_many_queues(conn: asyncpg.Connection) -> None:
    await backlog(conn, 20_000, queues=200)
    await conn.execute("ANALYZE notifyq.jobs")
    for queue in ("q1", "q2", "q3"):
        await claim(conn, 100, queue)
    await assert_batch_plans(conn, "analyzed on 200 queues of 100 queued, then 300 running", queue="q1")
