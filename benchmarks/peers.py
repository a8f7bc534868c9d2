"""Peers measured the way notifyq is: drain throughput and wake latency for pgqueuer and procrastinate.

    python -m benchmarks.peers [--jobs 20000] [--procrastinate-jobs 5000] [--runs 3] [--samples 200]
                               [--concurrency 50] [--peer pgqueuer|procrastinate]

Each measurement gets a fresh database (schema installed with the peer's own API) and a worker running as
a separate process, like `notifyq serve` in benchmarks/drain.py and benchmarks/wake_latency.py:

- drain: the worker is started and proven idle (one warm-up job ran), then N no-op jobs are inserted with
  the peer's bulk enqueue API in one statement; the figure runs from the insert's commit
  (`clock_timestamp()` read right after it) to the last per-job finish timestamp the peer writes
  (pgqueuer: `pgqueuer_log.created` of the 'successful' row; procrastinate: `procrastinate_events.at` of
  the 'succeeded' event). Both are `now()` of the transaction recording the outcome.
- wake latency: one job enqueued with the peer's normal API (so its NOTIFY trigger fires) every 20 ms;
  time from just before the enqueue call to the handler's first line, sent back over UDP.

Each configuration is `default` (library defaults, only the concurrency set to match) or `best` (the
fastest knobs measured on the 2-core development machine; see CONFIGS).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import anyio
import asyncpg
from anyio.abc import Process, SocketAttribute

from benchmarks.common import ROOT, admin_dsn, drop_database, dsn_for, emit, run
from benchmarks.wake_latency import summary

PEERS = ("pgqueuer", "procrastinate")

# Settings read by the launch code below. `concurrency` means the `concurrency` argument of drain()
# (WAKE_CONCURRENCY for wake_latency), the same number notifyq's daemon gets.
CONFIGS: dict[str, dict[str, dict[str, object]]] = {
    "pgqueuer": {
        "default": {
            "launcher": "pgqueuer.run supervisor as pgq run does (python -m benchmarks.peer_apps_pgqueuer)",
            "connection": "one asyncpg connection (pool: 0)",
            "event_loop": "uvloop (pgq run picks it whenever it is installed)",
            "batch_size": 10,
            "max_concurrent_tasks": "concurrency",
            "pool": 0,
            "dequeue_timeout_s": 30,
        },
        "best": {
            "launcher": "pgqueuer.run supervisor as pgq run does (python -m benchmarks.peer_apps_pgqueuer)",
            "connection": "one asyncpg connection (pool: 0)",
            "event_loop": "uvloop (pgq run picks it whenever it is installed)",
            "batch_size": 100,
            "max_concurrent_tasks": None,
            "pool": 0,
            "dequeue_timeout_s": 30,
            "note": "no per-worker cap: pgqueuer requires max_concurrent_tasks >= 2 * batch_size, so a cap "
            "of 50 allows batch_size 25 at most (measured ~4,500-5,900 jobs/s vs 8,000-10,400 uncapped, "
            "7,700 with a cap of 200; an asyncpg pool of 4 did not help)",
        },
    },
    "procrastinate": {
        "default": {
            "launcher": "procrastinate worker CLI (python -m procrastinate)",
            "connection": "PsycopgConnector, psycopg_pool defaults (4 connections, transactions)",
            "event_loop": "asyncio",
            "uvloop": False,
            "pool_max_size": None,
            "autocommit": False,
            "worker": {"concurrency": "concurrency"},
        },
        "best": {
            "launcher": "procrastinate worker CLI (python -m procrastinate)",
            "connection": "PsycopgConnector, psycopg_pool defaults, connections set to autocommit",
            "event_loop": "asyncio",
            "uvloop": False,
            "pool_max_size": None,
            "autocommit": True,
            "worker": {"concurrency": 20},
            "note": "autocommit drops the BEGIN/COMMIT round trips around each fetch/finish; concurrency 20 "
            "beat 10, 50 and 100; uvloop (through App.run_worker_async) and pool max_size 10 or 20 did "
            "not help; all differences were small next to the noise of a shared 2-core machine",
        },
    },
}

WAKE_CONCURRENCY = 10  # what benchmarks/wake_latency.py gives notifyq
WARM_UP_SAMPLES = 10
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


def _resolve(value: object, concurrency: int) -> object:
    return concurrency if value == "concurrency" else value


# Database and worker process.


@asynccontextmanager
async def database(peer: str) -> AsyncIterator[str]:
    """A new empty database with the peer's schema, installed with the peer's own API; dropped after."""
    name = f"nq_peer_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn(), timeout=10)
    try:
        await admin.execute(f"CREATE DATABASE {name}", timeout=30)
    finally:
        await admin.close()
    dsn = dsn_for(name)
    try:
        with anyio.fail_after(60):
            if peer == "pgqueuer":
                from pgqueuer import Queries

                conn = await asyncpg.connect(dsn)
                try:
                    await Queries.from_asyncpg_connection(conn).install()
                finally:
                    await conn.close()
            else:
                from benchmarks.peer_apps_procrastinate import make_app

                app = make_app(dsn, pool_max=1)
                async with app.open_async():
                    await app.schema_manager.apply_schema_async()
        yield dsn
    finally:
        with anyio.CancelScope(shield=True):
            await drop_database(dsn)


def _worker_command(
    peer: str, config: str, dsn: str, concurrency: int, udp_port: int
) -> tuple[list[str], dict[str, str]]:
    settings = CONFIGS[peer][config]
    env = {**os.environ, "BENCH_PEER_DSN": dsn, "BENCH_UDP_PORT": str(udp_port), "PYTHONPATH": str(ROOT)}
    if peer == "pgqueuer":
        batch_size = int(str(settings["batch_size"]))
        cap = _resolve(settings["max_concurrent_tasks"], concurrency)
        run_options: dict[str, object] = {
            "batch_size": batch_size,
            "dequeue_timeout_s": settings["dequeue_timeout_s"],
            # pgqueuer refuses a cap below twice the batch size.
            "max_concurrent_tasks": None if cap is None else max(int(str(cap)), 2 * batch_size),
        }
        env["BENCH_PGQ_RUN"] = json.dumps(run_options)
        env["BENCH_PGQ_POOL"] = str(settings["pool"])
        env["BENCH_PGQ_ENTRYPOINT_LIMIT"] = str(settings.get("entrypoint_concurrency_limit", 0))
        return [sys.executable, "-m", "benchmarks.peer_apps_pgqueuer"], env
    worker = settings["worker"]
    assert isinstance(worker, dict)
    options = {key: _resolve(value, concurrency) for key, value in worker.items()}
    if settings["pool_max_size"]:
        env["BENCH_PROC_POOL_MAX"] = str(settings["pool_max_size"])
    env["BENCH_PROC_AUTOCOMMIT"] = "1" if settings.get("autocommit") else "0"
    if settings["uvloop"] or set(options) - {"concurrency"}:
        env["BENCH_PROC_WORKER"] = json.dumps(options)
        env["BENCH_PROC_UVLOOP"] = "1" if settings["uvloop"] else "0"
        return [sys.executable, "-m", "benchmarks.peer_apps_procrastinate"], env
    command = [sys.executable, "-m", "procrastinate", "--app", "benchmarks.peer_apps_procrastinate.app"]
    command += ["--log-level", "warning", "worker", "--concurrency", str(options["concurrency"])]
    return command, env


def worker_concurrency(peer: str, config: str, concurrency: int) -> int | None:
    """The concurrency the worker actually gets for a requested one (None: pgqueuer without a cap)."""
    settings = CONFIGS[peer][config]
    if peer == "pgqueuer":
        cap = _resolve(settings["max_concurrent_tasks"], concurrency)
        return None if cap is None else max(int(str(cap)), 2 * int(str(settings["batch_size"])))
    worker = settings["worker"]
    assert isinstance(worker, dict)
    return int(str(_resolve(worker["concurrency"], concurrency)))


async def _log_tail(log: Path) -> str:
    return (await anyio.Path(log).read_text(errors="replace"))[-3000:]


@asynccontextmanager
async def worker(
    peer: str, config: str, dsn: str, concurrency: int, log: Path, udp_port: int = 0
) -> AsyncIterator[Process]:
    """The peer's worker as a separate process, output to `log`; terminated (then killed) on exit."""
    command, env = _worker_command(peer, config, dsn, concurrency, udp_port)
    with open(log, "wb") as out:  # noqa: ASYNC230  (opening a local file for the child's output)
        proc = await anyio.open_process(command, stdout=out, stderr=out, env=env, cwd=ROOT)
    try:
        yield proc
    finally:
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.terminate()
                with anyio.move_on_after(STOP_TIMEOUT_S):
                    await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await proc.aclose()


# The peer's own enqueue API, and where it records outcomes.


class _Client(Protocol):
    async def enqueue_noops(self, count: int) -> None: ...
    async def enqueue_wake(self) -> int: ...
    async def finished(self) -> tuple[int, datetime | None]: ...
    async def clock(self) -> datetime: ...


class _PgqueuerClient:
    """Enqueues through pgqueuer's Queries; finished jobs are the 'successful' rows of its log table."""

    def __init__(self, conn: Any) -> None:
        from pgqueuer import Queries

        self.conn = conn
        self.queries = Queries.from_asyncpg_connection(conn)
        self.log_table = self.queries.qbe.settings.queue_table_log

    async def enqueue_noops(self, count: int) -> None:
        # One statement: the list form of enqueue is an INSERT ... SELECT FROM UNNEST(...).
        await self.queries.enqueue(["noop"] * count, [None] * count, [0] * count)

    async def enqueue_wake(self) -> int:
        (job_id,) = await self.queries.enqueue("wake", None)
        return int(job_id)

    async def finished(self) -> tuple[int, datetime | None]:
        row = await self.conn.fetchrow(
            f"SELECT count(*), max(created) FROM {self.log_table} WHERE status = 'successful'", timeout=30
        )
        return int(row[0]), row[1]

    async def clock(self) -> datetime:
        value: datetime = await self.conn.fetchval("SELECT clock_timestamp()", timeout=30)
        return value


class _ProcrastinateClient:
    """Defers through a procrastinate App; finished jobs are its 'succeeded' events."""

    def __init__(self, app: Any, conn: Any) -> None:
        self.app = app
        self.conn = conn

    async def enqueue_noops(self, count: int) -> None:
        # One call to procrastinate_defer_jobs_v1 with every job in it.
        await self.app.tasks["noop"].batch_defer_async(*({} for _ in range(count)))

    async def enqueue_wake(self) -> int:
        job_id: int = await self.app.tasks["wake"].defer_async()
        return job_id

    async def finished(self) -> tuple[int, datetime | None]:
        row = await self.conn.fetchrow(
            "SELECT count(*), max(at) FROM procrastinate_events WHERE type = 'succeeded'", timeout=30
        )
        return int(row[0]), row[1]

    async def clock(self) -> datetime:
        value: datetime = await self.conn.fetchval("SELECT clock_timestamp()", timeout=30)
        return value


@asynccontextmanager
async def peer_client(peer: str, dsn: str) -> AsyncIterator[_Client]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        if peer == "pgqueuer":
            yield _PgqueuerClient(conn)
        else:
            from benchmarks.peer_apps_procrastinate import make_app

            app = make_app(dsn, pool_max=1)
            async with app.open_async():
                yield _ProcrastinateClient(app, conn)
    finally:
        await conn.close()


async def _wait_finished(
    client: _Client, count: int, proc: Process, log: Path, limit_s: float
) -> datetime | None:
    """Wait until `count` jobs are recorded finished; returns the latest finish time. Waiting only."""
    deadline = time.monotonic() + limit_s
    while True:
        done, last = await client.finished()
        if done >= count:
            return last
        if proc.returncode is not None:
            raise RuntimeError(f"worker exited ({proc.returncode}): {await _log_tail(log)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{done}/{count} jobs finished after {limit_s:.0f}s: {await _log_tail(log)}")
        # Seldom during a drain: each look counts a growing table, CPU taken from the peer measured
        # (notifyq's drain looks every 0.5 s at a partial index). The figure comes from timestamps.
        await anyio.sleep(0.05 if count == 1 else 1.0)


# The two measurements.


async def drain(peer: str, config: str, jobs: int, concurrency: int) -> float:
    """One drain run: jobs/s from the bulk insert's commit to the last recorded finish."""
    if peer not in CONFIGS or config not in CONFIGS[peer]:
        raise ValueError(f"unknown peer/config {peer}/{config}")
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / f"{peer}-{config}-drain.log"
        async with (
            database(peer) as dsn,
            worker(peer, config, dsn, concurrency, log) as proc,
            peer_client(peer, dsn) as client,
        ):
            # Ready and idle: one warm-up job ran (LISTEN set up, statements prepared).
            await client.enqueue_noops(1)
            await _wait_finished(client, 1, proc, log, START_TIMEOUT_S)
            with anyio.fail_after(120):
                await client.enqueue_noops(jobs)
            committed = await client.clock()
            last = await _wait_finished(client, jobs + 1, proc, log, 60 + jobs / 50)
    assert last is not None
    return jobs / (last - committed).total_seconds()


async def wake_latency(peer: str, config: str, samples: int) -> list[float]:
    """ms from just before each enqueue to the handler's first line; `samples` after the warm-up ones."""
    if peer not in CONFIGS or config not in CONFIGS[peer]:
        raise ValueError(f"unknown peer/config {peer}/{config}")
    out: list[float] = []
    async with await anyio.create_udp_socket(family=socket.AF_INET, local_host="127.0.0.1") as udp:
        port = udp.extra(SocketAttribute.local_port)
        with tempfile.TemporaryDirectory() as tmp:
            log = Path(tmp) / f"{peer}-{config}-wake.log"
            async with (
                database(peer) as dsn,
                worker(peer, config, dsn, WAKE_CONCURRENCY, log, port) as proc,
                peer_client(peer, dsn) as client,
            ):
                await client.enqueue_noops(1)
                await _wait_finished(client, 1, proc, log, START_TIMEOUT_S)
                for i in range(samples + WARM_UP_SAMPLES):
                    started = None
                    with anyio.move_on_after(10):
                        t0 = time.monotonic()
                        job_id = await client.enqueue_wake()
                        while started is None:
                            data, _ = await udp.receive()
                            got, stamp = data.decode().split()
                            if int(got) == job_id:  # anything else is a late report from an earlier job
                                started = float(stamp)
                    if started is None:
                        raise TimeoutError(f"sample {i}: no start within 10s: {await _log_tail(log)}")
                    if i >= WARM_UP_SAMPLES:
                        out.append((started - t0) * 1000)
                    await anyio.sleep(0.02)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument(
        "--procrastinate-jobs", type=int, default=5_000, help="procrastinate drains about 800 jobs/s"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--peer", choices=PEERS, action="append")
    parser.add_argument("--config", choices=("default", "best"), action="append")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for peer in args.peer or PEERS:
        jobs = args.jobs if peer == "pgqueuer" else min(args.jobs, args.procrastinate_jobs)
        results[peer] = {}
        for config in args.config or ("default", "best"):
            rates = [await drain(peer, config, jobs, args.concurrency) for _ in range(args.runs)]
            wake = await wake_latency(peer, config, args.samples)
            results[peer][config] = {
                "settings": CONFIGS[peer][config],
                "drain": {
                    "jobs": jobs,
                    "concurrency": args.concurrency,
                    "worker_concurrency": worker_concurrency(peer, config, args.concurrency),
                    "runs": [round(r) for r in rates],
                    "jobs_per_s_median": round(statistics.median(rates)),
                },
                "wake_ms": {
                    "samples": args.samples,
                    "concurrency": WAKE_CONCURRENCY,
                    "worker_concurrency": worker_concurrency(peer, config, WAKE_CONCURRENCY),
                    **summary(wake),
                },
            }
            print(peer, config, json.dumps(results[peer][config]["drain"]), file=sys.stderr)
    versions = {peer: _version(peer) for peer in results}
    emit("peers", {"versions": versions, "peers": results})


def _version(peer: str) -> str:
    from importlib.metadata import version

    return version(peer)


if __name__ == "__main__":
    run(main)
