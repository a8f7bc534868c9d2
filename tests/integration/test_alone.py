"""A job forgiven an unclear crash starts alone (worker/starter.py): the real executor, starter and
store against real Postgres. Its begin is a statement of its own, sent once every earlier start is
covered by the worker's entered_through mark, and no other job's begin is sent until its handler has
been called and the mark covers it too: for an async handler, after its first real await (the starter
shares the event loop); for a sync one, once its thread calls it. Never longer than ALONE_SECONDS."""

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
WORKER = uuid.UUID(int=7)


async def run_jobs(db_dsn: str, conn: asyncpg.Connection, registry: Registry, suspect_task: str) -> None:
    """Enqueue one job of `suspect_task` that crashed a worker before, then four `plain` jobs; claim all
    five and run them on five runners until they finish."""
    await conn.execute("INSERT INTO notifyq.jobs (task, priority) VALUES ($1, 1)", suspect_task)
    await conn.execute("INSERT INTO notifyq.jobs (task) SELECT 'plain' FROM generate_series(1, 4)")
    # What rescue (sql/queries/worker.sql, rescue_expired) leaves, set directly: forgiven once.
    await conn.execute("UPDATE notifyq.jobs SET unclear_crashes = 1 WHERE task = $1", suspect_task)
    await conn.execute(
        "INSERT INTO notifyq.workers (id, hostname, pid, queues, tasks, concurrency, lease_seconds)"
        " VALUES ($1, 'test', 1, '{default}', '{}', $2, 30)",
        WORKER,
        CONCURRENCY,
    )
    store = await Store.open(db_dsn)
    try:
        metrics = Metrics(["default"], registry.names, "test")
        prefetch = Prefetch(CONCURRENCY, CONCURRENCY, metrics)
        leases = Leases()
        completer = Completer(store, leases, metrics, 100)
        executor = Executor(
            registry, prefetch, Starter(store, WORKER), completer, leases, metrics, CONCURRENCY, lambda: None
        )
        tasks = registry.names
        claims = await store.claim_head(
            "default", tasks, [None] * len(tasks), CONCURRENCY, 30.0, WORKER, 1 << 40
        )
        claims.sort(key=lambda c: (-c.job.priority, c.job.run_at, c.job.id))  # as the claimer does
        assert len(claims) == CONCURRENCY and claims[0].job.unclear_crashes == 1
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


async def mark(conn: asyncpg.Connection) -> datetime:
    value: datetime = await conn.fetchval("SELECT entered_through FROM notifyq.workers WHERE id = $1", WORKER)
    return value


async def test_an_async_job_forgiven_before_starts_alone_until_its_first_await(
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
    # Written before the others began; theirs goes with the next begin or heartbeat (none here).
    assert await mark(conn) == alone, "the mark covers it"


async def test_a_sync_job_forgiven_before_holds_other_starts_until_its_thread_calls_it(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    called: list[datetime] = []
    returned: list[datetime] = []

    def suspect(job: Job) -> None:
        called.append(datetime.now(UTC))
        time.sleep(0.5)
        returned.append(datetime.now(UTC))

    await run_jobs(db_dsn, conn, registry_with(suspect, "suspect_sync"), "suspect_sync")
    [alone] = await started_at(conn, "suspect_sync")
    others = await started_at(conn, "plain")
    assert alone < called[0] < min(others), "nothing else began before its thread called it"
    assert max(others) < returned[0], "the others did not wait for the thread to return"


async def test_a_begin_alone_waits_no_longer_than_alone_seconds(
    db_dsn: str, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job begun alone whose handler is never called (a stuck runner) holds other starts for
    ALONE_SECONDS at most: the starter itself, against real Postgres, with no executor."""
    monkeypatch.setattr(starter_module, "ALONE_SECONDS", 0.3)
    await conn.execute("INSERT INTO notifyq.jobs (task, unclear_crashes) VALUES ('a', 0), ('b', 0)")
    await conn.execute("UPDATE notifyq.jobs SET unclear_crashes = 1 WHERE task = 'a'")
    store = await Store.open(db_dsn)
    try:
        starter = Starter(store, WORKER)
        claims = await store.claim_head("default", ["a", "b"], [None, None], 2, 30.0, WORKER, 1 << 40)
        async with anyio.create_task_group() as tg:
            await tg.start(starter.run)
            with anyio.fail_after(5):
                assert await starter.begin(claims[0])  # never reported as called
                t0 = time.monotonic()
                assert await starter.begin(claims[1])
                waited = time.monotonic() - t0
            tg.cancel_scope.cancel()
    finally:
        await store.close()
    assert 0.3 <= waited < 2.0


async def test_the_mark_moves_only_past_batches_whose_handlers_were_all_called(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """The starter's entered_through: the start time of the latest batch such that every job begun up
    to it has had its handler called (or will not run here). Real begin statements, no executor."""
    await conn.execute("INSERT INTO notifyq.jobs (task) SELECT 't' FROM generate_series(1, 3)")
    store = await Store.open(db_dsn)
    try:
        starter = Starter(store, WORKER)
        a, b, c = await store.claim_head("default", ["t"], [None], 3, 30.0, WORKER, 1 << 40)
        async with anyio.create_task_group() as tg:
            await tg.start(starter.run)
            with anyio.fail_after(5):
                async with anyio.create_task_group() as first:  # one statement for a and b
                    first.start_soon(starter.begin, a)
                    first.start_soon(starter.begin, b)
                assert await starter.begin(c)
            tg.cancel_scope.cancel()
    finally:
        await store.close()
    starts = dict(await conn.fetch("SELECT id, started_at FROM notifyq.jobs"))
    assert starts[a.job.id] == starts[b.job.id] < starts[c.job.id]
    starter.entered(c.job.id, c.lease_token)
    assert starter.entered_through is None, "a's and b's batch is still open"
    starter.entered(a.job.id, uuid.uuid4())  # a stale run's word (another lease token): ignored
    starter.entered(b.job.id, uuid.uuid4())
    assert starter.entered_through is None
    starter.entered(a.job.id, a.lease_token)
    starter.entered(a.job.id, a.lease_token)  # twice: no harm
    assert starter.entered_through is None
    starter.entered(b.job.id, b.lease_token)
    assert starter.entered_through == starts[c.job.id], "both batches closed, in order"


async def test_a_begun_job_given_back_unrun_is_covered_only_once_its_attempt_is_back(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """A begun job the runner gives back (its lease went unconfirmed too long) did not run: the mark
    must not cover it before the completer has given its attempt back, or a crash in between would
    count an attempt for a job whose handler was never called."""
    await conn.execute("INSERT INTO notifyq.jobs (task) VALUES ('t')")
    registry = Registry()

    @registry.task("t")
    async def handler(job: Job) -> None:
        raise AssertionError("must not run")

    store = await Store.open(db_dsn)
    try:
        metrics = Metrics(["default"], registry.names, "test")
        prefetch = Prefetch(1, 1, metrics)
        leases = Leases(fence_after=10.0)
        starter = Starter(store, WORKER)
        completer = Completer(
            store, leases, metrics, 100, on_settled=lambda o: starter.entered(o.job_id, o.lease_token)
        )
        executor = Executor(registry, prefetch, starter, completer, leases, metrics, 1, lambda: None)
        [claim] = await store.claim_head("default", ["t"], [None], 1, 30.0, WORKER, 1 << 40)
        leases.add(claim.job.id, claim.lease_token, time.monotonic() - 11.0)  # unconfirmed for 11 s
        prefetch.add([claim], 0.0)
        prefetch.close()
        with anyio.fail_after(10):
            await executor.run()  # begins it, then gives it back unrun; the completer is not running
            assert starter.entered_through is None, "not covered while its attempt is not back"
            async with anyio.create_task_group() as tg:
                completer.close(5.0)
                tg.start_soon(completer.run)
    finally:
        await store.close()
    row = await conn.fetchrow("SELECT state::text, attempts, started_at FROM notifyq.jobs")
    assert (row["state"], row["attempts"]) == ("queued", 0), "given back, attempt refunded"
    assert starter.entered_through is not None, "covered once the write is done"


async def test_a_mark_that_cannot_be_written_stops_nothing(db_dsn: str, conn: asyncpg.Connection) -> None:
    """The mark written after a job begun alone fails (here: a trigger refuses mark_entered's update of
    the workers row; in the field a dropped connection): the starter logs it and goes on. It used to end
    the daemon."""
    await conn.execute(
        "CREATE FUNCTION pg_temp.no_update() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN IF current_query() NOT LIKE '%started_at%' THEN"  # not begin_jobs: mark_entered
        "    RAISE EXCEPTION 'workers row refuses updates'; END IF; RETURN NEW; END $$"
    )
    await conn.execute(
        "CREATE TRIGGER no_update BEFORE UPDATE ON notifyq.workers"
        " FOR EACH ROW EXECUTE FUNCTION pg_temp.no_update()"
    )

    async def suspect(job: Job) -> None:
        await asyncio.sleep(0)

    await run_jobs(db_dsn, conn, registry_with(suspect, "suspect"), "suspect")
