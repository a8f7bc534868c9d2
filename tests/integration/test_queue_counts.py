"""The database gauges' reading (migration 0006): what it counts, and one session counting for all."""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
import pytest

from notifyq import queries
from notifyq.store import Store

pytestmark = pytest.mark.timeout(60)

WORKER = uuid.UUID("00000000-0000-0000-0000-0000000000cc")


async def reading(conn: asyncpg.Connection, max_age: float) -> tuple[dict[tuple[str, str, str], int], object]:
    rows = await conn.fetch(queries.get("queue_stats"), max_age)
    taken = {r["taken_at"] for r in rows}
    assert len(taken) == 1
    groups = {(r["queue"], r["task"], r["state"]): r["jobs"] for r in rows if r["queue"] is not None}
    return groups, next(iter(taken))


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
    first, taken_at = await reading(conn, 60)
    await conn.execute("INSERT INTO notifyq.jobs (task) SELECT 't' FROM generate_series(1, 6)")
    other = await asyncpg.connect(db_dsn)
    try:
        # Another daemon with a 60 s interval: the reading is recent enough, served as it is.
        assert await reading(other, 60) == (first, taken_at)
        # Older than it wants (made an hour old), but a third session holds the counting lock: still
        # served as it is.
        await conn.execute("UPDATE notifyq.queue_counts SET taken_at = taken_at - interval '1 hour'")
        aged = taken_at - timedelta(hours=1)
        holder = await asyncpg.connect(db_dsn)
        try:
            await holder.execute("SELECT pg_advisory_lock(hashtext('notifyq.queue_counts')::bigint)")
            assert await reading(other, 60) == (first, aged)
        finally:
            await holder.close()
        again, later = await reading(other, 60)
    finally:
        await other.close()
    assert again == {("default", "t", "queued"): 10} and later > taken_at  # type: ignore[operator]


async def test_an_empty_reading_still_says_when_it_was_taken(db_dsn: str) -> None:
    """So that gauges frozen on an empty queue still show as stale (NotifyqStatsStale)."""
    store = await Store.open(db_dsn)
    try:
        for reading in (await store.queue_stats(max_age=60.0), await store.queue_stats()):
            assert reading.stats == [] and reading.taken_at is not None
    finally:
        await store.close()


async def test_odd_ages_serve_a_reading_and_the_fresh_count_writes_nothing(conn: asyncpg.Connection) -> None:
    await conn.execute("INSERT INTO notifyq.jobs (task) VALUES ('t')")
    for age in (float("nan"), float("inf"), -5.0, None, 1e300):
        counts, _ = await reading(conn, age)  # type: ignore[arg-type]
        assert counts == {("default", "t", "queued"): 1}
    await conn.execute("TRUNCATE notifyq.queue_counts")
    await conn.execute("SET default_transaction_read_only = on")
    try:
        rows = await conn.fetch(queries.get("queue_stats_now"))
    finally:
        await conn.execute("RESET default_transaction_read_only")
    assert [(r["queue"], r["task"], r["state"], r["jobs"]) for r in rows] == [
        ("default", "t", "queued", 1),
        (None, None, None, 0),
    ]
    assert await conn.fetchval("SELECT count(*) FROM notifyq.queue_counts") == 0


async def test_the_daemons_gauge_reading_is_one_statement_with_all_it_shows(db_dsn: str) -> None:
    """The groups as queue_stats counts them, the live daemons and what they serve, the health columns."""
    conn = await asyncpg.connect(db_dsn)
    try:
        await conn.execute(
            "INSERT INTO notifyq.jobs (task, queue, run_at) SELECT 'a', 'q', now() - interval '1 minute'"
            " FROM generate_series(1, 3) UNION ALL SELECT 'b', 'r', now() + interval '1 hour'"
        )
        await conn.execute(
            "INSERT INTO notifyq.workers (id, hostname, pid, queues, tasks, concurrency, lease_seconds, last_seen)"
            " VALUES (gen_random_uuid(), 'live', 1, '{q,z}', '{a,x}', 1, 30, now()),"
            "        (gen_random_uuid(), 'live2', 2, '{q}', '{a}', 1, 30, now()),"
            "        (gen_random_uuid(), 'dead', 3, '{r}', '{b}', 1, 30, now() - interval '61 seconds')"
        )
    finally:
        await conn.close()
    store = await Store.open(db_dsn)
    try:
        reading = await store.gauge_reading(max_age=60.0)
    finally:
        await store.close()
    groups = {(s.queue, s.task, s.state): s.jobs for s in reading.queues.stats}
    assert groups == {("q", "a", "queued"): 3, ("r", "b", "scheduled"): 1}
    ages = {s.state: s.oldest_age for s in reading.queues.stats}
    assert ages["queued"] is not None and 55 < ages["queued"] < 120
    assert reading.queues.taken_at is not None
    assert reading.workers_alive == 2
    assert reading.served == {("q", "a"), ("q", "x"), ("z", "a"), ("z", "x")}
    assert reading.dead_tuples >= 0 and reading.oldest_xact_age >= 0 and 0 <= reading.usage <= 1


async def test_an_empty_gauge_reading(db_dsn: str) -> None:
    store = await Store.open(db_dsn)
    try:
        reading = await store.gauge_reading(max_age=60.0)
    finally:
        await store.close()
    assert reading.queues.stats == [] and reading.queues.taken_at is not None
    assert reading.workers_alive == 0 and reading.served == set()
