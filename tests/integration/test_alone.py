"""The starter's marks (worker/starter.py): the real executor, starter and store against real Postgres.

A job forgiven an unclear crash starts alone: begun_seq is moved to it exactly once every earlier job's
handler was called, and begun_seq moves past it only together with an entered_seq that covers it, once
its handler has been called: for an async handler, after its first real await (the starter shares the
event loop); for a sync one, once its thread calls it. Never longer than ALONE_SECONDS. A trigger logs
every move of the worker's marks with the time, which the tests compare with the handlers' own times."""

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
from notifyq.models import Claim
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


async def add_worker(conn: asyncpg.Connection) -> None:
    """The worker's row (the daemon's first heartbeat makes it), and a log of every move of its marks."""
    await conn.execute(
        "INSERT INTO notifyq.workers (id, hostname, pid, queues, tasks, concurrency, lease_seconds)"
        " VALUES ($1, 'test', 1, '{default}', '{}', $2, 30)",
        WORKER,
        CONCURRENCY,
    )
    await conn.execute("CREATE TABLE public.mark_log (at timestamptz, begun bigint, entered bigint)")
    await conn.execute(
        "CREATE FUNCTION public.log_marks() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF (NEW.begun_seq, NEW.entered_seq) IS DISTINCT FROM (OLD.begun_seq, OLD.entered_seq) THEN"
        "   INSERT INTO public.mark_log VALUES (clock_timestamp(), NEW.begun_seq, NEW.entered_seq);"
        " END IF; RETURN NEW; END $$"
    )
    await conn.execute(
        "CREATE TRIGGER log_marks AFTER UPDATE ON notifyq.workers FOR EACH ROW EXECUTE FUNCTION public.log_marks()"
    )


async def mark_log(conn: asyncpg.Connection) -> list[tuple[datetime, int, int]]:
    return [tuple(r) for r in await conn.fetch("SELECT * FROM public.mark_log ORDER BY at")]


async def claim(store: Store, starter: Starter, tasks: list[str], n: int) -> list[Claim]:
    """As the claimer does: claimed, sorted in claim order, and told to the starter."""
    claims = await store.claim_head("default", tasks, [None] * len(tasks), n, 30.0, WORKER, 1 << 40)
    claims.sort(key=lambda c: c.seq)
    starter.claimed_jobs(claims)
    return claims


async def run_jobs(
    db_dsn: str, conn: asyncpg.Connection, registry: Registry, suspect_task: str
) -> list[tuple[datetime, int, int]]:
    """Enqueue one job of `suspect_task` that crashed a worker before (first in claim order), then four
    `plain` jobs; claim all five and run them on five runners until they finish. The marks' log."""
    await conn.execute("INSERT INTO notifyq.jobs (task, priority) VALUES ($1, 1)", suspect_task)
    await conn.execute("INSERT INTO notifyq.jobs (task) SELECT 'plain' FROM generate_series(1, 4)")
    # What rescue (sql/queries/worker.sql, rescue_expired) leaves, set directly: forgiven once.
    await conn.execute("UPDATE notifyq.jobs SET unclear_crashes = 1 WHERE task = $1", suspect_task)
    await add_worker(conn)
    store = await Store.open(db_dsn)
    try:
        metrics = Metrics(["default"], registry.names, "test")
        prefetch = Prefetch(CONCURRENCY, CONCURRENCY, metrics)
        leases = Leases()
        starter = Starter(store, WORKER, CONCURRENCY)
        completer = Completer(
            store, leases, metrics, 100, on_settled=lambda o: starter.entered(o.job_id, o.lease_token)
        )
        executor = Executor(
            registry, prefetch, starter, completer, leases, metrics, CONCURRENCY, lambda: None
        )
        claims = await claim(store, starter, registry.names, CONCURRENCY)
        assert len(claims) == CONCURRENCY and claims[0].job.unclear_crashes == 1 and claims[0].seq == 1
        for c in claims:
            leases.add(c.job.id, c.lease_token, time.monotonic())
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
    return await mark_log(conn)


def registry_with(suspect: Callable[..., Any], name: str) -> Registry:
    registry = Registry()
    registry.task(name)(suspect)

    @registry.task("plain")
    async def plain(job: Job) -> None:
        await asyncio.sleep(0)

    return registry


def alone_then_others(log: list[tuple[datetime, int, int]]) -> tuple[datetime, datetime]:
    """When begun_seq was moved to the suspect (claim_seq 1) exactly, and when it first moved past it;
    the move past it carries an entered_seq that covers the suspect."""
    first = next(entry for entry in log if entry[1] >= 1)
    past = next(entry for entry in log if entry[1] > 1)
    assert first[1] == 1, f"the suspect is begun alone: {log}"
    assert past[2] >= 1, f"nothing after it begins before entered_seq covers it: {log}"
    return first[0], past[0]


async def test_an_async_job_forgiven_before_starts_alone_until_its_first_await(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    entered: list[datetime] = []

    async def suspect(job: Job) -> None:
        entered.append(datetime.now(UTC))
        time.sleep(0.2)  # noqa: ASYNC251 -- on purpose: blocks before its first await, nothing may start
        entered.append(datetime.now(UTC))
        await asyncio.sleep(0.05)

    alone, others = alone_then_others(
        await run_jobs(db_dsn, conn, registry_with(suspect, "suspect"), "suspect")
    )
    assert alone < entered[0], "begun before its handler ran"
    assert others > entered[1], "nothing else began before the suspect's first await"


async def test_a_sync_job_forgiven_before_holds_other_starts_until_its_thread_calls_it(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    called: list[datetime] = []
    returned: list[datetime] = []

    def suspect(job: Job) -> None:
        called.append(datetime.now(UTC))
        time.sleep(0.5)
        returned.append(datetime.now(UTC))

    log = await run_jobs(db_dsn, conn, registry_with(suspect, "suspect_sync"), "suspect_sync")
    alone, others = alone_then_others(log)
    assert alone < called[0] < others, "nothing else began before its thread called it"
    assert others < returned[0], "the others did not wait for the thread to return"


async def test_a_begin_alone_waits_no_longer_than_alone_seconds(
    db_dsn: str, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job begun alone whose handler is never called (a stuck runner) holds other starts for
    ALONE_SECONDS at most: the starter itself, against real Postgres, with no executor."""
    monkeypatch.setattr(starter_module, "ALONE_SECONDS", 0.3)
    await conn.execute("INSERT INTO notifyq.jobs (task, unclear_crashes) VALUES ('a', 0), ('b', 0)")
    await conn.execute("UPDATE notifyq.jobs SET unclear_crashes = 1 WHERE task = 'a'")
    await add_worker(conn)
    store = await Store.open(db_dsn)
    try:
        starter = Starter(store, WORKER, 2)
        a, b = await claim(store, starter, ["a", "b"], 2)
        assert a.job.task == "a"
        async with anyio.create_task_group() as tg:
            await tg.start(starter.run)
            with anyio.fail_after(5):
                assert await starter.begin(a)  # never reported as called
                t0 = time.monotonic()
                assert await starter.begin(b)
                waited = time.monotonic() - t0
            tg.cancel_scope.cancel()
    finally:
        await store.close()
    assert 0.3 <= waited < 2.0


async def test_entered_seq_moves_only_past_jobs_whose_handlers_were_all_called(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """The starter's entered mark: the job before the first whose handler was not called yet (nor gone
    back), never beyond begun_seq. Real mark statements, no executor."""
    await conn.execute("INSERT INTO notifyq.jobs (task) SELECT 't' FROM generate_series(1, 3)")
    await add_worker(conn)
    store = await Store.open(db_dsn)
    try:
        starter = Starter(store, WORKER, 3)
        a, b, c = await claim(store, starter, ["t"], 3)
        assert starter.entered_mark == 0, "nothing begun"
        async with anyio.create_task_group() as tg:
            await tg.start(starter.run)
            with anyio.fail_after(5):
                async with anyio.create_task_group() as first:
                    first.start_soon(starter.begin, a)
                    first.start_soon(starter.begin, b)
                assert await starter.begin(c)
            tg.cancel_scope.cancel()
    finally:
        await store.close()
    assert starter.begun >= 3
    assert (await mark_log(conn))[-1][1] == starter.begun
    starter.entered(c.job.id, c.lease_token)
    assert starter.entered_mark == 0, "a and b are still open"
    starter.entered(a.job.id, uuid.uuid4())  # a stale run's word (another lease token): ignored
    starter.entered(b.job.id, uuid.uuid4())
    assert starter.entered_mark == 0
    starter.entered(a.job.id, a.lease_token)
    starter.entered(a.job.id, a.lease_token)  # twice: no harm
    assert starter.entered_mark == 1
    starter.entered(b.job.id, b.lease_token)
    assert starter.entered_mark == 3, "all three closed"


async def test_a_begun_job_given_back_unrun_is_covered_only_once_its_attempt_is_back(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """A begun job the runner gives back (its lease went unconfirmed too long) did not run: the mark
    must not cover it before the completer has given its attempt back, or a crash in between would
    count an attempt for a job whose handler was never called."""
    await conn.execute("INSERT INTO notifyq.jobs (task) VALUES ('t')")
    await add_worker(conn)
    registry = Registry()

    @registry.task("t")
    async def handler(job: Job) -> None:
        raise AssertionError("must not run")

    store = await Store.open(db_dsn)
    try:
        metrics = Metrics(["default"], registry.names, "test")
        prefetch = Prefetch(1, 1, metrics)
        leases = Leases(fence_after=10.0)
        starter = Starter(store, WORKER, 1)
        completer = Completer(
            store, leases, metrics, 100, on_settled=lambda o: starter.entered(o.job_id, o.lease_token)
        )
        executor = Executor(registry, prefetch, starter, completer, leases, metrics, 1, lambda: None)
        [claimed] = await claim(store, starter, ["t"], 1)
        leases.add(claimed.job.id, claimed.lease_token, time.monotonic() - 11.0)  # unconfirmed for 11 s
        prefetch.add([claimed], 0.0)
        prefetch.close()
        with anyio.fail_after(10):
            await executor.run()  # begins it, then gives it back unrun; the completer is not running
            assert starter.begun == 1
            assert starter.entered_mark == 0, "not covered while its attempt is not back"
            completer.close(5.0)
            await completer.run()
    finally:
        await store.close()
    row = await conn.fetchrow("SELECT state::text, attempts FROM notifyq.jobs")
    assert (row["state"], row["attempts"]) == ("queued", 0), "given back, attempt refunded"
    assert starter.entered_mark == 1, "covered once the write is done"


async def test_a_mark_that_cannot_be_written_costs_the_waiting_jobs_their_start_not_the_daemon(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """The database refuses the mark statement (here a trigger; in the field a dropped connection): the
    jobs waiting for it do not run here and go back with their attempt refunded, and the starter goes
    on: the next statement that gets through starts jobs again."""
    await conn.execute("INSERT INTO notifyq.jobs (task) SELECT 't' FROM generate_series(1, 2)")
    await add_worker(conn)
    await conn.execute("CREATE TABLE public.refuse (n int)")
    await conn.execute("INSERT INTO public.refuse VALUES (1)")
    await conn.execute(
        "CREATE FUNCTION public.no_update() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN IF EXISTS (SELECT FROM public.refuse) THEN"
        "    RAISE EXCEPTION 'workers row refuses updates'; END IF; RETURN NEW; END $$"
    )
    await conn.execute(
        "CREATE TRIGGER no_update BEFORE UPDATE ON notifyq.workers"
        " FOR EACH ROW WHEN (NEW.begun_seq <> OLD.begun_seq) EXECUTE FUNCTION public.no_update()"
    )
    store = await Store.open(db_dsn)
    try:
        starter = Starter(store, WORKER, 1)
        a, b = await claim(store, starter, ["t"], 2)
        async with anyio.create_task_group() as tg:
            await tg.start(starter.run)
            with anyio.fail_after(5):
                assert not await starter.begin(a)
                await conn.execute("DELETE FROM public.refuse")
                assert await starter.begin(b)
            tg.cancel_scope.cancel()
    finally:
        await store.close()
    assert starter.begun >= 2


async def test_a_claim_never_heard_back_goes_back_before_the_mark_passes_it(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """A claim whose answer never came back (here: simply not told to the starter) still moved the
    worker's counter. The next claim shows the gap, and the mark statement that first passes it gives
    those rows back, attempt refunded."""
    await conn.execute("INSERT INTO notifyq.jobs (task) SELECT 't' FROM generate_series(1, 3)")
    await add_worker(conn)
    store = await Store.open(db_dsn)
    try:
        starter = Starter(store, WORKER, 1)
        unheard = await store.claim_head("default", ["t"], [None], 2, 30.0, WORKER, 1 << 40)
        [later] = await claim(store, starter, ["t"], 1)
        assert later.seq == 3
        async with anyio.create_task_group() as tg:
            await tg.start(starter.run)
            with anyio.fail_after(5):
                assert await starter.begin(later)
            tg.cancel_scope.cancel()
    finally:
        await store.close()
    rows = dict(await conn.fetch("SELECT id, (state::text, attempts) FROM notifyq.jobs"))
    assert {rows[c.job.id] for c in unheard} == {("queued", 0)}
    assert rows[later.job.id] == ("running", 1)
    assert starter.begun >= 3
