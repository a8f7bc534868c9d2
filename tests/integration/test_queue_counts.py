"""The database gauges' reading (migration 0006): what it counts, and one session counting for all."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from notifyq import queries
from notifyq.store import Store

pytestmark = pytest.mark.timeout(60)

WORKER = uuid.UUID("00000000-0000-0000-0000-0000000000cc")


async def reading(conn: asyncpg.Connection, max_age: float) -> tuple[dict[tuple[str, str, str], int], object]:
    rows = await conn.fetch(queries.get("queue_stats"), max_age)
    taken = {r["taken_at"] for r in rows}
    assert len(taken) <= 1
    return {(r["queue"], r["task"], r["state"]): r["jobs"] for r in rows}, next(iter(taken), None)


async def test_the_reading_counts_live_states_and_never_finished_ones(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO notifyq.jobs (task, queue, run_at)"
        " SELECT 'a', 'q', now() - interval '1 minute' FROM generate_series(1, 5)"
        " UNION ALL SELECT 'a', 'q', now() + interval '1 hour' FROM generate_series(1, 3)"
        " UNION ALL SELECT 'b', 'q', now() FROM generate_series(1, 2)"
    )
    claimed = await conn.fetch(queries.get("claim_head"), "q", ["b"], [None], 10, 30.0, WORKER, 1 << 40)
    assert len(claimed) == 2
    await conn.execute(
        "UPDATE notifyq.jobs SET state = s::notifyq.job_state, finished_at = now()"
        " FROM (VALUES (1, 'failed'), (2, 'succeeded')) AS v(n, s)"
        " WHERE id = (SELECT id FROM notifyq.jobs WHERE task = 'a' AND state = 'queued'"
        "             AND run_at < now() ORDER BY id OFFSET v.n - 1 LIMIT 1)"
    )
    counts, taken_at = await reading(conn, 0)
    assert counts == {
        ("q", "a", "queued"): 3,
        ("q", "a", "scheduled"): 3,
        ("q", "b", "running"): 2,
        ("q", "a", "failed"): 1,
    }
    assert taken_at is not None
    ages = {r["state"]: r["oldest_age"] for r in await conn.fetch(queries.get("queue_stats"), 0)}
    assert 55 < ages["queued"] < 120


async def test_one_session_counts_for_all_within_the_age_asked(conn: asyncpg.Connection, db_dsn: str) -> None:
    await conn.execute("INSERT INTO notifyq.jobs (task) SELECT 't' FROM generate_series(1, 4)")
    first, taken_at = await reading(conn, 0)
    await conn.execute("INSERT INTO notifyq.jobs (task) SELECT 't' FROM generate_series(1, 6)")
    other = await asyncpg.connect(db_dsn)
    try:
        # Another daemon with a 60 s interval: the reading is recent enough, served as it is.
        assert await reading(other, 60) == (first, taken_at)
        # Older than it wants, but a third session holds the counting lock: still served as it is.
        holder = await asyncpg.connect(db_dsn)
        try:
            await holder.execute("SELECT pg_advisory_lock(hashtext('notifyq.queue_counts')::bigint)")
            assert await reading(other, 0) == (first, taken_at)
        finally:
            await holder.close()
        again, later = await reading(other, 0)
    finally:
        await other.close()
    assert again == {("default", "t", "queued"): 10} and later > taken_at  # type: ignore[operator]


async def test_the_store_reading_carries_when_it_was_taken(db_dsn: str) -> None:
    store = await Store.open(db_dsn)
    try:
        empty = await store.queue_stats()
        assert empty.stats == [] and empty.taken_at is None
    finally:
        await store.close()
