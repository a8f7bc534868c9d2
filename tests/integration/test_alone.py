"""A job that was under way when its worker died starts alone (worker/starter.py): the real executor,
starter and store against real Postgres. Its begin is a statement of its own, and no other job's begin
is sent until its handler is under way: for an async handler its first real await, for a sync one its
thread's return, and never longer than the starter's ALONE_SECONDS."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import asyncpg
import pytest

from notifyq import Job, Registry
from notifyq.metrics import Metrics
from notifyq.store import Store
from notifyq.worker import starter as starter_module
from notifyq.worker.completer import Completer
from notifyq.worker.executor import Executor
from notifyq.worker.leases import Leases
from notifyq.worker.prefetch import Prefetch
from notifyq.worker.starter import Starter

pytestmark = pytest.mark.timeout(30)
CONCURRENCY = 5


async def run_jobs(db_dsn: str, conn: asyncpg.Connection, registry: Registry, suspect_task: str) -> None:
    """Enqueue one job of `suspect_task` that crashed a worker before, then four `plain` jobs; claim all
    five and run them on five runners until they finish."""
    await conn.execute("INSERT INTO notifyq.jobs (task, priority) VALUES ($1, 1)", suspect_task)
    await conn.execute("INSERT INTO notifyq.jobs (task) SELECT 'plain' FROM generate_series(1, 4)")
    # Rescue's mark (sql/queries/worker.sql, rescue_expired), set directly: crashed once, forgiven.
    await conn.execute("UPDATE notifyq.jobs SET crashes = 1 WHERE task = $1", suspect_task)
    store = await Store.open(db_dsn)
    try:
        metrics = Metrics(["default"], registry.names, "test")
        prefetch = Prefetch(CONCURRENCY, CONCURRENCY, metrics)
        leases = Leases()
        completer = Completer(store, leases, metrics, 100)
        executor = Executor(
            registry, prefetch, Starter(store), completer, leases, metrics, CONCURRENCY, lambda: None
        )
        tasks = registry.names
        claims = await store.claim_head(
            "default", tasks, [None] * len(tasks), CONCURRENCY, 30.0, uuid.uuid4(), 1 << 40
        )
        assert len(claims) == CONCURRENCY and claims[0].job.crashes == 1
        for claim in claims:  # as the claimer does
            leases.add(claim.job.id, claim.lease_token, time.monotonic())
        prefetch.add(claims, 0.0)
        prefetch.close()
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                await tg.start(completer.run)
                await executor.run()
                completer.close(10.0)
    finally:
        await store.close()
    states = await conn.fetch("SELECT state::text, attempts FROM notifyq.jobs")
    assert [tuple(r) for r in states] == [("succeeded", 1)] * CONCURRENCY


async def started_at(conn: asyncpg.Connection, task: str) -> list[datetime]:
    rows = await conn.fetch("SELECT started_at FROM notifyq.jobs WHERE task = $1 ORDER BY id", task)
    return [r["started_at"] for r in rows]


def registry_with(suspect: Callable[..., Any], name: str) -> Registry:
    registry = Registry()
    registry.task(name)(suspect)

    @registry.task("plain")
    async def plain(job: Job) -> None:
        await asyncio.sleep(0)

    return registry


async def test_an_async_job_that_crashed_before_starts_alone_until_its_first_await(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    entered: list[datetime] = []

    async def suspect(job: Job) -> None:
        entered.append(datetime.now(UTC))
        time.sleep(0.2)  # noqa: ASYNC251 -- on purpose: blocks before its first await, nothing may start
        entered.append(datetime.now(UTC))
        await asyncio.sleep(0.05)

    await run_jobs(db_dsn, conn, registry_with(suspect, "suspect"), "suspect")
    [alone] = await started_at(conn, "suspect")
    others = await started_at(conn, "plain")
    assert alone < entered[0], "begun before its handler ran"
    assert min(others) > entered[1], "nothing else began before the suspect's first await"


async def test_a_sync_job_that_crashed_before_holds_other_starts_until_its_thread_returns(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    returned: list[datetime] = []

    def suspect(job: Job) -> None:
        time.sleep(0.3)
        returned.append(datetime.now(UTC))

    await run_jobs(db_dsn, conn, registry_with(suspect, "suspect_sync"), "suspect_sync")
    others = await started_at(conn, "plain")
    assert min(others) >= returned[0], "nothing else began while its thread ran"


async def test_other_starts_wait_no_longer_than_alone_seconds(
    db_dsn: str, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(starter_module, "ALONE_SECONDS", 0.2)
    returned: list[datetime] = []

    def suspect(job: Job) -> None:
        time.sleep(2.0)
        returned.append(datetime.now(UTC))

    await run_jobs(db_dsn, conn, registry_with(suspect, "suspect_slow"), "suspect_slow")
    [alone] = await started_at(conn, "suspect_slow")
    others = await started_at(conn, "plain")
    assert max(others) < returned[0], "the others started while the long sync handler still ran"
    assert (min(others) - alone).total_seconds() >= 0.2
