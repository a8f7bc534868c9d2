"""Handlers and rows that misbehave: none of them may stop the daemon or lose another job."""

from __future__ import annotations

import asyncio
import time

import anyio
import asyncpg
import pytest

from notifyq import Backoff, Job, Registry, Retry, Snooze, enqueue
from tests.support import running_daemon, wait_for

pytestmark = pytest.mark.timeout(60)
FAST = Backoff(base_seconds=0.05, factor=1.0, cap_seconds=0.05, jitter=0.0)


async def row(conn: asyncpg.Connection, job_id: int, columns: str = "*") -> asyncpg.Record:
    found: asyncpg.Record = await conn.fetchrow(f"SELECT {columns} FROM notifyq.jobs WHERE id = $1", job_id)
    return found


async def wait_done(
    conn: asyncpg.Connection,
    job_id: int,
    states: tuple[str, ...],
    timeout: float = 15,
    columns: str = "*",
) -> asyncpg.Record:
    async def check() -> asyncpg.Record | None:
        r = await row(conn, job_id, columns)
        return r if r["state"] in states else None

    found: asyncpg.Record = await wait_for(check, timeout, f"job {job_id} in {states}")
    return found


async def test_misbehaving_handlers_are_failures_not_crashes(conn: asyncpg.Connection, db_dsn: str) -> None:
    registry = Registry(backoff=FAST)

    @registry.task("own.cancel", max_attempts=2)
    async def own_cancel(job: Job) -> None:
        raise asyncio.CancelledError()

    @registry.task("nul.result")
    async def nul_result(job: Job) -> dict[str, str]:
        return {"text": "a\x00b"}

    @registry.task("nul.error", max_attempts=1)
    async def nul_error(job: Job) -> None:
        raise ValueError("bad\x00byte and a lone \ud800 surrogate")

    @registry.task("snooze.forever", max_attempts=1)
    async def snooze_forever(job: Job) -> None:
        raise Snooze(float("inf"))

    @registry.task("retry.far", max_attempts=1)
    async def retry_far(job: Job) -> None:
        raise Retry("much later", delay=1e13)

    @registry.task("snooze.long")
    async def snooze_long(job: Job) -> None:
        raise Snooze(9 * 365 * 86400)

    @registry.task("retry.long")
    async def retry_long(job: Job) -> None:
        raise Retry("much later", delay=9 * 365 * 86400)

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    @registry.task("unprintable", max_attempts=1)
    async def unprintable(job: Job) -> None:
        raise Unprintable()

    @registry.task("sys.exit", max_attempts=1)
    def sys_exit(job: Job) -> None:
        raise SystemExit(3)

    @registry.task("fine")
    async def fine(job: Job) -> str:
        return "ok"

    @registry.task("leaks.secrets", max_attempts=1)
    async def leaks_secrets(job: Job) -> None:
        raise RuntimeError("cache redis://:hunter2H@cache:6379/0 and api password=s3cretX down")

    ids = {
        name: await enqueue(conn, name)
        for name in (
            "own.cancel",
            "nul.result",
            "nul.error",
            "snooze.forever",
            "retry.far",
            "snooze.long",
            "retry.long",
            "unprintable",
            "sys.exit",
            "leaks.secrets",
        )
    }
    async with running_daemon(db_dsn, registry) as daemon:
        cancelled = await wait_done(conn, ids["own.cancel"], ("failed",))
        nul_ok = await wait_done(conn, ids["nul.result"], ("succeeded",))
        nul_err = await wait_done(conn, ids["nul.error"], ("failed",))
        unprintable_row = await wait_done(conn, ids["unprintable"], ("failed",))
        exited = await wait_done(conn, ids["sys.exit"], ("failed",))
        leaked = await wait_done(conn, ids["leaks.secrets"], ("failed",))
        forever = await wait_done(conn, ids["snooze.forever"], ("failed",))
        too_far = await wait_done(conn, ids["retry.far"], ("failed",))
        snoozed = await wait_for(lambda: _requeued(conn, ids["snooze.long"]), 10, "snooze written")
        far = await wait_for(lambda: _requeued(conn, ids["retry.long"]), 10, "retry written")
        # The daemon is still alive and working.
        after = await enqueue(conn, "fine")
        await wait_done(conn, after, ("succeeded",))
        dropped = daemon.metrics.results_dropped
        assert dropped.labels("not_storable")._value.get() == 1, "the dropped result is counted"
    assert cancelled["attempts"] == 2 and cancelled["last_error"].startswith("CancelledError")
    assert nul_ok["result"] is None, "a result jsonb cannot hold is dropped, the success kept"
    assert nul_err["last_error"].startswith("ValueError: badbyte and a lone ? surrogate")
    assert unprintable_row["last_error"].startswith(
        "Unprintable: <unprintable: its __str__ raised RuntimeError>"
    )
    # Out-of-range delays fail the attempt in the handler, with the argument and its limit named.
    assert forever["last_error"].startswith("ValueError: Snooze(seconds) must be between 0 and 315360000")
    assert too_far["last_error"].startswith("ValueError: Retry(delay) must be between 0 and 315360000")
    assert exited["last_error"].startswith("SystemExit: 3")
    # A password in any URL or key=value text of a handler's error is hidden in the stored error too.
    assert leaked["last_error"].startswith(
        "RuntimeError: cache redis://:***@cache:6379/0 and api password=***"
    )
    assert snoozed["attempts"] == 0 and snoozed["delay_days"] > 3000
    assert far["attempts"] == 1 and far["delay_days"] > 3000


async def _requeued(conn: asyncpg.Connection, job_id: int) -> asyncpg.Record | None:
    r: asyncpg.Record | None = await conn.fetchrow(
        "SELECT attempts, extract(epoch FROM run_at - now()) / 86400 AS delay_days FROM notifyq.jobs"
        " WHERE id = $1 AND state = 'queued' AND run_at > now() + interval '1 day'",
        job_id,
    )
    return r


async def test_undecodable_payload_fails_that_job_only(conn: asyncpg.Connection, db_dsn: str) -> None:
    registry = Registry()
    ran: list[int] = []

    @registry.task("t")
    async def handler(job: Job) -> None:
        ran.append(job.id)

    deep = "[" * 3000 + "]" * 3000  # valid jsonb, deeper than Python's recursion limit
    bad = await conn.fetchval(
        "INSERT INTO notifyq.jobs (task, payload) VALUES ('t', $1::jsonb) RETURNING id", deep
    )
    good = await enqueue(conn, "t", {"n": 1})
    async with running_daemon(db_dsn, registry):
        failed = await wait_done(conn, bad, ("failed",))
        await wait_done(conn, good, ("succeeded",))
    assert failed["attempts"] == 1
    assert failed["last_error"] == "Discard: payload cannot be decoded: RecursionError"
    assert ran == [good]


async def test_a_run_at_no_driver_decodes_fails_no_claim(conn: asyncpg.Connection, db_dsn: str) -> None:
    """A row whose run_at Python's datetime cannot hold (before year 1 in UTC), claimed with others: it
    used to make the whole claim fail, every time. The producer checks now refuse such a row; this one
    gets in as an older schema (or an owner with the checks off) would let it."""
    registry = Registry()
    seen: dict[int, int] = {}

    @registry.task("t")
    async def handler(job: Job) -> None:
        seen[job.id] = job.run_at.year

    await conn.execute("ALTER TABLE notifyq.jobs DROP CONSTRAINT IF EXISTS jobs_run_at_range")
    await conn.execute("SET session_replication_role = replica")  # no triggers: the producer checks are off
    bad = await conn.fetchval(
        "INSERT INTO notifyq.jobs (task, run_at) VALUES ('t', '0001-01-01 00:00:00+00 BC') RETURNING id"
    )
    await conn.execute("RESET session_replication_role")
    good = [await enqueue(conn, "t", {"n": n}) for n in range(3)]
    async with running_daemon(db_dsn, registry, prefetch=10):
        for job_id in [bad, *good]:  # read without run_at, which this test's driver cannot decode either
            await wait_done(conn, job_id, ("succeeded",), columns="state::text AS state")
    assert seen == {bad: 1, **dict.fromkeys(good, seen[good[0]])}, "run_at reached the handler clamped"


async def test_a_payload_not_in_utf8_fails_that_job_only(db_dsn: str) -> None:
    """A SQL_ASCII database stores whatever bytes a client sent; a payload that is not UTF-8 fails to
    decode. It used to fail the whole claim, every time, while /readyz said ok."""
    from tests.conftest import _admin
    from tests.support import dsn_for

    name = db_dsn.rsplit("/", 1)[1] + "_ascii"
    await _admin(
        f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
    )
    try:
        dsn = dsn_for(name)
        conn = await asyncpg.connect(dsn)
        try:
            from notifyq import migrate

            await migrate.apply(conn)
            bad = await conn.fetchval(
                "INSERT INTO notifyq.jobs (task, payload) VALUES ('t', ('{\"s\": \"' || chr(255) || '\"}')::jsonb)"
                " RETURNING id"
            )
            good = [await enqueue(conn, "t", {"n": n}) for n in range(3)]
            registry = Registry()
            ran: list[int] = []

            @registry.task("t")
            async def handler(job: Job) -> None:
                ran.append(job.id)

            async with running_daemon(dsn, registry, prefetch=10):
                failed = await wait_done(conn, bad, ("failed",), columns="state::text AS state, last_error")
                for job_id in good:
                    await wait_done(conn, job_id, ("succeeded",))
        finally:
            await conn.close()
    finally:
        await _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    assert failed["last_error"] == "Discard: payload cannot be decoded: UnicodeDecodeError"
    assert sorted(ran) == good


async def test_sync_handler_keeps_its_slot_until_the_thread_returns(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    registry = Registry(backoff=FAST)
    timeline: list[tuple[str, int, float]] = []

    @registry.task("sync.slow", timeout=0.2, max_attempts=1)
    def slow(job: Job) -> None:
        timeline.append(("start", job.id, time.monotonic()))
        # The fault itself: a sync handler overrunning its 0.2 s timeout (a thread cannot be interrupted).
        time.sleep(0.8)
        timeline.append(("end", job.id, time.monotonic()))

    first = await enqueue(conn, "sync.slow")
    second = await enqueue(conn, "sync.slow")
    async with running_daemon(db_dsn, registry, concurrency=1):
        a = await wait_done(conn, first, ("failed",))
        await wait_done(conn, second, ("failed",))
    assert a["last_error"] == "TimeoutError: timed out after 0.2s"
    starts = [t for kind, _, t in timeline if kind == "start"]
    ends = [t for kind, _, t in timeline if kind == "end"]
    assert len(starts) == 2 and starts[1] >= ends[0], "with one slot, the second job waited for the thread"


async def test_callable_object_with_async_call_is_awaited(conn: asyncpg.Connection, db_dsn: str) -> None:
    registry = Registry()
    done = anyio.Event()

    class Handler:
        async def __call__(self, job: Job) -> str:
            done.set()
            return "awaited"

    registry.task("obj")(Handler())
    job_id = await enqueue(conn, "obj")
    async with running_daemon(db_dsn, registry):
        with anyio.fail_after(5):
            await done.wait()
        r = await wait_done(conn, job_id, ("succeeded",))
    assert r["result"] == '"awaited"'
