"""A small notifyq app: one quick task, one slow one, one that fails now and then.

Run it:     notifyq serve --app examples.hello:registry --dsn postgresql://localhost/app
Feed it:    python -m examples.hello --dsn postgresql://localhost/app --jobs 50
Or from any language:
    INSERT INTO notifyq.jobs (task, payload) VALUES ('hello.greet', '{"name": "psql"}');
"""

from __future__ import annotations

import argparse
import random

import anyio
import asyncpg
import structlog

from notifyq import Job, Registry, Retry, enqueue

registry = Registry()
log = structlog.get_logger(component="examples.hello")


@registry.task("hello.greet")
async def greet(job: Job) -> dict[str, str]:
    """Quick: returns at once; the return value is stored as the job's result."""
    name = job.payload.get("name", "world") if isinstance(job.payload, dict) else "world"
    log.info("hello", name=name, job_id=job.id)
    return {"greeting": f"hello, {name}"}


@registry.task("hello.slow", timeout=10)
async def slow(job: Job) -> None:
    """Slow: sleeps a while (at most 10 s, its timeout)."""
    await anyio.sleep(float(job.payload.get("seconds", 2)))


@registry.task("hello.flaky", max_attempts=4)
def flaky(job: Job) -> str:
    """Fails now and then (a sync handler, so it runs in a worker thread); retried with backoff."""
    if random.random() < 0.3:
        raise Retry("the coin came up tails", delay=1.0)
    return "heads"


# Periodic: a greeting every ten seconds, as cron would make it (README, "Periodic jobs"). Each tick is
# one job however many daemons run this app.
registry.periodic("*/10 * * * * *", name="hello-every-10s", task="hello.greet", payload={"name": "cron"})


async def enqueue_burst(conn: asyncpg.Connection, count: int) -> list[int]:
    """Enqueue `count` jobs spread across the three tasks, in one transaction."""
    ids = []
    async with conn.transaction():
        for i in range(count):
            kind = i % 3
            if kind == 0:
                ids.append(await enqueue(conn, "hello.greet", {"name": f"friend {i}"}))
            elif kind == 1:
                ids.append(await enqueue(conn, "hello.slow", {"seconds": 0.5 + random.random()}))
            else:
                ids.append(await enqueue(conn, "hello.flaky", {"n": i}))
    return ids


async def _main(dsn: str | None, count: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        ids = await enqueue_burst(conn, count)
    finally:
        await conn.close()
    print(f"enqueued {len(ids)} jobs: ids {ids[0]}..{ids[-1]}" if ids else "enqueued nothing")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Enqueue a burst of example jobs.")
    parser.add_argument("--dsn", default=None, help="Postgres DSN (default: PG* variables)")
    parser.add_argument("--jobs", type=int, default=30)
    args = parser.parse_args()
    anyio.run(_main, args.dsn, args.jobs)
