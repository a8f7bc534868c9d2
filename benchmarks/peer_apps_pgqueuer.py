"""The pgqueuer worker the peer benchmarks run: `python -m benchmarks.peer_apps_pgqueuer`.

Same two handlers as benchmarks/apps.py: a no-op, and one that reports its start time over UDP. The entry
point does what `pgq run benchmarks.peer_apps_pgqueuer:create --batch-size ...` does (pgqueuer's own
`pgqueuer.run` supervisor, on uvloop when installed), because `pgq run` itself fails at start-up with the
installed typer 0.29 (its --log-level parser hands a str where the enum is expected). Settings come from
the environment: BENCH_PEER_DSN, BENCH_PGQ_POOL, BENCH_PGQ_ENTRYPOINT_LIMIT, and BENCH_PGQ_RUN (a JSON
object: batch_size, max_concurrent_tasks, dequeue_timeout_s).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import asyncpg
import pgqueuer
from pgqueuer import AsyncpgDriver, AsyncpgPoolDriver, Job, PgQueuer
from pgqueuer.core import logconfig

_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def _register(pgq: PgQueuer, entrypoint_limit: int) -> None:
    @pgq.entrypoint("noop", concurrency_limit=entrypoint_limit)
    async def noop(job: Job) -> None:
        """Nothing: the benchmark measures the queue, not the handler."""

    @pgq.entrypoint("wake", concurrency_limit=entrypoint_limit)
    async def wake(job: Job) -> None:
        """First line: take the time (CLOCK_MONOTONIC is one clock for every process)."""
        now = time.monotonic()
        _sock.sendto(f"{job.id} {now!r}".encode(), ("127.0.0.1", int(os.environ["BENCH_UDP_PORT"])))


@asynccontextmanager
async def create() -> AsyncIterator[PgQueuer]:
    """One asyncpg connection (pgqueuer's usual setup), or a pool when BENCH_PGQ_POOL is set."""
    dsn = os.environ["BENCH_PEER_DSN"]
    pool_size = int(os.environ.get("BENCH_PGQ_POOL", "0"))
    entrypoint_limit = int(os.environ.get("BENCH_PGQ_ENTRYPOINT_LIMIT", "0"))
    if pool_size:
        async with asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size) as pool:
            pgq = PgQueuer(AsyncpgPoolDriver(pool))
            _register(pgq, entrypoint_limit)
            yield pgq
    else:
        conn = await asyncpg.connect(dsn)
        try:
            pgq = PgQueuer(AsyncpgDriver(conn))
            _register(pgq, entrypoint_limit)
            yield pgq
        finally:
            await conn.close()


def main() -> None:
    """`pgq run` without its CLI: the supervisor with the options in BENCH_PGQ_RUN, uvloop if installed."""
    options = json.loads(os.environ.get("BENCH_PGQ_RUN", "{}"))
    logconfig.setup_fancy_logger(logconfig.LogLevel.WARNING)
    worker = pgqueuer.run(
        create,
        batch_size=int(options.get("batch_size", 10)),
        max_concurrent_tasks=options.get("max_concurrent_tasks"),
        dequeue_timeout=timedelta(seconds=float(options.get("dequeue_timeout_s", 30))),
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(worker)
    else:
        uvloop.run(worker)


if __name__ == "__main__":
    main()
