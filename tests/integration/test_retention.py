"""Retention: prune_finished deletes old finished jobs in bounded batches, oldest first, and never a queued
or running one; prune_workers forgets silent workers, never sooner than ten of their leases nor than its
floor. The statements run as the daemon runs them, with the database clock pinned by `notifyq.now`;
the last test drives the daemon's own Maintenance.prune on its Store with the real clock."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from notifyq import logs, queries
from notifyq.store import Store
from notifyq.worker import maintenance
from notifyq.worker.maintenance import Maintenance
from tests.support import LogCapture

pytestmark = pytest.mark.timeout(60)

T = datetime(2031, 6, 1, 0, 0, tzinfo=UTC)
RETENTION = 3600.0
WORKER = uuid.UUID("00000000-0000-0000-0000-0000000000aa")


async def set_clock(conn: asyncpg.Connection, when: datetime) -> None:
    await conn.execute(f"SET notifyq.now = '{when.isoformat()}'")
    assert await conn.fetchval("SELECT notifyq.now()") == when


async def prune_finished(conn: asyncpg.Connection, retention: float, limit: int) -> int:
    deleted: int = await conn.fetchval(queries.get("prune_finished"), retention, limit)
    return deleted


async def remaining(conn: asyncpg.Connection) -> set[str]:
    return {r[0] for r in await conn.fetch("SELECT task FROM notifyq.jobs")}


async def finished_job(conn: asyncpg.Connection, task: str, state: str, finished_at: datetime) -> int:
    job_id: int = await conn.fetchval("INSERT INTO notifyq.jobs (task) VALUES ($1) RETURNING id", task)
    await conn.execute(
        "UPDATE notifyq.jobs SET state = $2::notifyq.job_state, finished_at = $3 WHERE id = $1",
        job_id,
        state,
        finished_at,
    )
    return job_id


async def test_prune_finished_deletes_only_old_finished_jobs(conn: asyncpg.Connection) -> None:
    cutoff = T - timedelta(seconds=RETENTION)
    ancient = T - timedelta(days=400)
    await set_clock(conn, T)
    await finished_job(conn, "succeeded_old", "succeeded", cutoff - timedelta(seconds=100))
    await finished_job(conn, "failed_old", "failed", cutoff - timedelta(seconds=50))
    await finished_job(conn, "cancelled_old", "cancelled", cutoff - timedelta(seconds=10))
    await finished_job(conn, "just_past", "succeeded", cutoff - timedelta(microseconds=1))
    await finished_job(conn, "at_cutoff", "succeeded", cutoff)
    await finished_job(conn, "failed_young", "failed", T - timedelta(seconds=10))
    await finished_job(conn, "cancelled_young", "cancelled", T - timedelta(seconds=1))

    # Queued and running rows that are as old as rows get: scheduled, created and started long ago.
    await conn.execute("INSERT INTO notifyq.jobs (task) VALUES ('queued_ancient')")
    # An operator who puts a failed job back by hand (not with `notifyq retry`) leaves its finished_at.
    for task in ("requeued_by_hand", "running_ancient"):
        job_id = await finished_job(conn, task, "failed", ancient)
        await conn.execute(
            "UPDATE notifyq.jobs SET state = 'queued', attempts = 0, run_at = $2 WHERE id = $1",
            job_id,
            ancient,
        )
    await conn.execute(
        "UPDATE notifyq.jobs SET created_at = $1, run_at = $1 WHERE task LIKE '%ancient' OR task = 'requeued_by_hand'",
        ancient,
    )
    # ...and a daemon claimed one of them long ago and still holds it (its lease long expired, no rescue).
    await set_clock(conn, ancient)
    claimed = await conn.fetch(
        queries.get("claim_head"), "default", ["running_ancient"], [None], 1, 30.0, WORKER, 1 << 40
    )
    assert len(claimed) == 1
    await set_clock(conn, T)
    states = dict(await conn.fetch("SELECT task, state::text FROM notifyq.jobs"))
    assert states["running_ancient"] == "running" and states["requeued_by_hand"] == "queued"

    assert await prune_finished(conn, RETENTION, 100) == 4
    assert await remaining(conn) == {
        "at_cutoff",
        "failed_young",
        "cancelled_young",
        "queued_ancient",
        "requeued_by_hand",
        "running_ancient",
    }
    # Nothing else is old enough, however often it runs.
    assert await prune_finished(conn, RETENTION, 100) == 0
    # With a retention of zero every finished row goes, and still no queued or running one.
    assert await prune_finished(conn, 0.0, 100) == 3
    assert await remaining(conn) == {"queued_ancient", "requeued_by_hand", "running_ancient"}


async def test_prune_finished_takes_at_most_the_limit_oldest_first(conn: asyncpg.Connection) -> None:
    await set_clock(conn, T)
    # Ids in one order, ages in another: the oldest finished_at goes first, not the lowest id.
    ages = [5, 2, 7, 1, 6, 3, 4]
    for age in ages:
        await finished_job(
            conn, f"age{age}", "succeeded", T - timedelta(seconds=RETENTION) - timedelta(hours=age)
        )
    await finished_job(conn, "young", "succeeded", T - timedelta(seconds=RETENTION - 1))

    assert await prune_finished(conn, RETENTION, 3) == 3
    assert await remaining(conn) == {"age1", "age2", "age3", "age4", "young"}
    assert await prune_finished(conn, RETENTION, 3) == 3
    assert await remaining(conn) == {"age1", "young"}
    assert await prune_finished(conn, RETENTION, 3) == 1
    assert await prune_finished(conn, RETENTION, 3) == 0
    assert await remaining(conn) == {"young"}
    assert await prune_finished(conn, RETENTION, 1) == 0


async def add_worker(conn: asyncpg.Connection, name: str, lease_seconds: float, silent_for: float) -> None:
    await conn.execute(
        "INSERT INTO notifyq.workers (id, hostname, pid, queues, tasks, concurrency, lease_seconds, last_seen)"
        " VALUES (gen_random_uuid(), $1, 1, '{default}', '{t}', 1, $2, $3)",
        name,
        lease_seconds,
        T - timedelta(seconds=silent_for),
    )


async def test_prune_workers_waits_ten_leases_and_at_least_the_floor(conn: asyncpg.Connection) -> None:
    await set_clock(conn, T)
    # Lease 30 s: forgotten after 300 s of silence even though the floor is 60 s.
    await add_worker(conn, "l30_silent_200", 30, 200)
    await add_worker(conn, "l30_silent_299", 30, 299.999)
    await add_worker(conn, "l30_silent_300", 30, 300)
    await add_worker(conn, "l30_silent_301", 30, 301)
    # Lease 1 s: ten leases are 10 s, but never sooner than the 60 s floor.
    await add_worker(conn, "l1_silent_30", 1, 30)
    await add_worker(conn, "l1_silent_59", 1, 59)
    await add_worker(conn, "l1_silent_61", 1, 61)
    await add_worker(conn, "fresh", 30, 0)

    await conn.execute(queries.get("prune_workers"), 60.0)
    left = {r[0] for r in await conn.fetch("SELECT hostname FROM notifyq.workers")}
    assert left == {
        "l30_silent_200",
        "l30_silent_299",
        "l30_silent_300",
        "l1_silent_30",
        "l1_silent_59",
        "fresh",
    }

    # Time passes: the same rule applied later forgets the rest in turn.
    await set_clock(conn, T + timedelta(seconds=10))
    await conn.execute(queries.get("prune_workers"), 60.0)
    left = {r[0] for r in await conn.fetch("SELECT hostname FROM notifyq.workers")}
    assert left == {"l30_silent_200", "l1_silent_30", "fresh"}


async def test_maintenance_prune_works_in_bounded_batches(conn: asyncpg.Connection, db_dsn: str) -> None:
    per_tick = maintenance.PRUNE_BATCH * maintenance.PRUNE_BATCHES_PER_TICK
    extra = maintenance.PRUNE_BATCH // 2
    # Real clock here: the daemon's pool sessions do not pin notifyq.now.
    await conn.execute(
        "INSERT INTO notifyq.jobs (task) SELECT 'old' FROM generate_series(1, $1::int)", per_tick + extra
    )
    await conn.execute(
        "UPDATE notifyq.jobs SET state = 'succeeded',"
        " finished_at = now() - make_interval(secs => $1::float8 + 600 + id) WHERE task = 'old'",
        RETENTION,
    )
    await conn.execute("INSERT INTO notifyq.jobs (task) SELECT 'young' FROM generate_series(1, 5)")
    await conn.execute(
        "UPDATE notifyq.jobs SET state = 'failed', finished_at = now() - make_interval(secs => $1::float8 / 2)"
        " WHERE task = 'young'",
        RETENTION,
    )
    await conn.execute("INSERT INTO notifyq.jobs (task) SELECT 'waiting' FROM generate_series(1, 5)")
    await conn.execute(
        "UPDATE notifyq.jobs SET created_at = now() - interval '400 days' WHERE task = 'waiting'"
    )
    for name, lease, silent in (("gone", 30.0, 400.0), ("recent", 30.0, 200.0), ("long_lease", 100.0, 400.0)):
        await conn.execute(
            "INSERT INTO notifyq.workers (id, hostname, pid, queues, tasks, concurrency, lease_seconds, last_seen)"
            " VALUES (gen_random_uuid(), $1, 1, '{default}', '{t}', 1, $2, now() - make_interval(secs => $3))",
            name,
            lease,
            silent,
        )

    async def counts() -> dict[str, int]:
        return dict(await conn.fetch("SELECT task, count(*) FROM notifyq.jobs GROUP BY task"))

    youngest_old = [
        r[0]
        for r in await conn.fetch(
            "SELECT id FROM notifyq.jobs WHERE task = 'old' ORDER BY finished_at DESC LIMIT $1", extra
        )
    ]
    youngest_old.sort()
    log = LogCapture()
    logs.configure("json", "debug", stream=log)
    store = await Store.open(db_dsn)
    try:
        upkeep = Maintenance(store, ["default"], ["old"], 30.0, RETENTION, on_rescued=lambda: None)
        # One tick deletes at most PRUNE_BATCHES_PER_TICK batches of PRUNE_BATCH, the oldest first.
        await upkeep.prune()
        assert await counts() == {"old": extra, "young": 5, "waiting": 5}
        left = await conn.fetch("SELECT id FROM notifyq.jobs WHERE task = 'old' ORDER BY id")
        assert [r[0] for r in left] == youngest_old
        assert [e["jobs"] for e in log.events("jobs_pruned")] == [per_tick]
        workers = {r[0] for r in await conn.fetch("SELECT hostname FROM notifyq.workers")}
        assert workers == {"recent", "long_lease"}

        # The next tick takes the rest and stops at the short batch.
        await upkeep.prune()
        assert await counts() == {"young": 5, "waiting": 5}
        assert [e["jobs"] for e in log.events("jobs_pruned")] == [per_tick, extra]

        # Nothing left to prune: a tick deletes nothing and logs nothing.
        await upkeep.prune()
        assert await counts() == {"young": 5, "waiting": 5}
        assert [e["jobs"] for e in log.events("jobs_pruned")] == [per_tick, extra]
    finally:
        await store.close()
