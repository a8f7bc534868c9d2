"""The procrastinate app the peer benchmarks run, and a worker entry point for the tuned configuration.

Default configuration: `python -m procrastinate --app benchmarks.peer_apps_procrastinate.app worker ...`.
Tuned configuration: `python -m benchmarks.peer_apps_procrastinate`, which runs the same worker through
`App.run_worker_async`, optionally on uvloop. Settings come from the environment: BENCH_PEER_DSN, and
BENCH_PROC_POOL_MAX (psycopg_pool max_size; unset keeps the library default), BENCH_PROC_AUTOCOMMIT, and
for the entry point BENCH_PROC_UVLOOP and BENCH_PROC_WORKER (a JSON object of `run_worker_async` options).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from typing import Any

import procrastinate

_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


async def _autocommit(conn: Any) -> None:
    await conn.set_autocommit(True)


def make_app(dsn: str, pool_max: int | None = None, autocommit: bool = False) -> procrastinate.App:
    """An app with the two benchmark tasks. pool_max=None leaves psycopg_pool's default pool size;
    autocommit=True makes the pool's connections autocommit (no BEGIN/COMMIT round trips per query)."""
    pool_args: dict[str, Any] = {}
    if pool_max:
        pool_args = {"min_size": min(4, pool_max), "max_size": pool_max}
    if autocommit:
        # Through `configure` (run on each new pool connection): `kwargs={"autocommit": True}` clashes
        # with the autocommit=True procrastinate passes when it opens its LISTEN connection.
        pool_args["configure"] = _autocommit
    bench = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn, **pool_args))

    @bench.task(name="noop")
    async def noop() -> None:
        """Nothing: the benchmark measures the queue, not the handler."""

    @bench.task(name="wake", pass_context=True)
    async def wake(context: procrastinate.JobContext) -> None:
        """First line: take the time (CLOCK_MONOTONIC is one clock for every process)."""
        now = time.monotonic()
        _sock.sendto(f"{context.job.id} {now!r}".encode(), ("127.0.0.1", int(os.environ["BENCH_UDP_PORT"])))

    return bench


app = make_app(
    os.environ.get("BENCH_PEER_DSN", ""),
    int(os.environ.get("BENCH_PROC_POOL_MAX", "0")) or None,
    os.environ.get("BENCH_PROC_AUTOCOMMIT") == "1",
)


async def _serve(options: dict[str, Any]) -> None:
    async with app.open_async():
        await app.run_worker_async(**options)


def main() -> None:
    """Run one worker with the options in BENCH_PROC_WORKER, on uvloop when BENCH_PROC_UVLOOP=1."""
    options = json.loads(os.environ.get("BENCH_PROC_WORKER", "{}"))
    if os.environ.get("BENCH_PROC_UVLOOP") == "1":
        import uvloop

        uvloop.run(_serve(options))
    else:
        asyncio.run(_serve(options))


if __name__ == "__main__":
    main()
