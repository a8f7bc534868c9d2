"""Handlers that ask for a context: `handler(job, ctx)` beside the plain `handler(job)`."""

from __future__ import annotations

from typing import Any

import anyio
import asyncpg
import pytest

from notifyq import Context, Job, Registry, enqueue
from tests.support import LogCapture, running_daemon, wait_for

pytestmark = pytest.mark.timeout(30)


async def test_async_and_sync_handlers_get_their_attempts_context(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    seen: dict[str, Any] = {}
    done = anyio.Event()
    registry = Registry()

    @registry.task("with.ctx", timeout=20)
    async def with_ctx(job: Job, ctx: Context) -> None:
        seen["async"] = (ctx.job == job, ctx.time_left())
        ctx.log.info("from_the_handler", note="hello")

    @registry.task("sync.ctx")
    def sync_ctx(job: Job, ctx: Context) -> None:
        seen["sync"] = (ctx.job.id == job.id, ctx.deadline)
        done.set()

    @registry.task("plain")
    async def plain(job: Job) -> None:
        seen["plain"] = job.task

    log = LogCapture()
    async with running_daemon(db_dsn, registry, log=log):
        first = await enqueue(conn, "with.ctx")
        await enqueue(conn, "plain")
        await enqueue(conn, "sync.ctx")
        with anyio.fail_after(10):
            await done.wait()
        await wait_for(lambda: len(seen) == 3, 10, "all three handlers")
    same_job, left = seen["async"]
    assert same_job and left is not None and 15 < left <= 20
    assert seen["sync"][0] and seen["sync"][1] == float("inf")  # no timeout on that task
    assert seen["plain"] == "plain"
    [line] = log.events("from_the_handler")
    assert (line["job_id"], line["task"], line["attempt"], line["note"]) == (first, "with.ctx", 1, "hello")


def test_a_handler_must_take_the_job_or_the_job_and_a_context() -> None:
    registry = Registry()
    with pytest.raises(ValueError, match=r"must take \(job\) or \(job, ctx\), not 3"):

        @registry.task("three")
        async def three(job: Job, ctx: Context, extra: int) -> None: ...

    with pytest.raises(ValueError, match="not 0"):

        @registry.task("none")
        async def none() -> None: ...

    @registry.task("defaults")
    async def defaults(job: Job, ctx: Context, extra: int = 1) -> None: ...

    assert registry["defaults"].takes_context
