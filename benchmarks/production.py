"""production: speed on a Postgres configured like production (issue 13), in a cluster this starts.

python -m benchmarks.production [--runs 3] [--jobs 20000] [--retained 1000000] [--only CASE ...]

The README's server runs with autovacuum off (a CI setting), so the jobs table there is never analyzed.
This starts a throwaway cluster with initdb's stock settings and autovacuum on, and measures there:

- `drain`: 20,000 no-op jobs inserted through each system's own API, the table then VACUUM ANALYZEd
  (what autovacuum does after a bulk insert) or not, and a worker started on the backlog; beside an
  empty history or beside 1,000,000 finished jobs kept (notifyq: succeeded rows in notifyq.jobs, which
  retention keeps; pgqueuer: 'successful' rows in its log table, where its finished jobs go). The rate
  runs from the first job's finish to the last's, on the database clock (so a worker's start-up is not
  counted): notifyq with concurrency 50 (what the other drain benchmarks use) and 200, pgqueuer in its
  best configuration (benchmarks/peers.py). The database's CPU is the postgres processes' CPU time over
  that window.
- `daemons`: 1, 2, 4 and 8 notifyq daemons of concurrency 50 on one queue (20,000 jobs, analyzed): jobs/s,
  the p99 of the claim and outcome statements (from the daemons' own histograms), the database's CPU,
  and checks that every job ran once (attempts = 1, one success counted across daemons, no error
  logged). The jobs are inserted due in 20 s so that every daemon is up and idle when they come due.
- `wake`: wake latency (benchmarks/wake_latency.py: an idle daemon, one job every 20 ms, 200 samples)
  and its floor in the same run; `idle`: statements per second of an idle daemon over 60 s, after a
  70 s warm-up and in its first minute (benchmarks/idle_cost.py).
- `gauges`: the cost of one gauge reading at 0 and 1,000,000 retained rows beside the backlog (the count
  each daemon ran before migration 0006, and the shared reading now), and how many counts 1 and 8
  daemons cause per interval (pg_stat_user_functions).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from benchmarks import peers
from benchmarks.common import daemon, drop_database, emit, fresh_database, insert_noops, run
from benchmarks.drain import UNFINISHED
from benchmarks.idle_cost import idle_rate
from benchmarks.wake_latency import floor_latency, notifyq_latency, summary
from notifyq.devserver import PrivateCluster, free_port

# initdb's settings except where a throwaway cluster must differ (port, socket folder); autovacuum is
# initdb's default (on) and named so that the result says so.
STOCK = {"fsync": "on", "full_page_writes": "on", "autovacuum": "on"}
CASES = ("drain", "daemons", "gauges", "wake", "idle")
LEAD_SECONDS = 20.0  # the daemons case: jobs come due this long after the insert

# The gauges' statement before migration 0006, kept here to measure what it cost.
OLD_QUEUE_STATS = """
SELECT j.queue, j.task,
       CASE WHEN j.state = 'queued' AND j.run_at > now() THEN 'scheduled' ELSE j.state::text END AS state,
       count(*)::bigint AS jobs, extract(epoch FROM now() - min(j.run_at))::float8 AS oldest_age
FROM notifyq.jobs AS j
WHERE j.state IN ('queued', 'running', 'failed')
GROUP BY 1, 2, 3 ORDER BY jobs DESC LIMIT 10000
"""


@contextmanager
def production_cluster(folder: Path) -> Iterator[PrivateCluster]:
    cluster = PrivateCluster(folder / "pgdata", 0, settings=STOCK)
    cluster.init()
    cluster.port = free_port()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop("fast")


def postgres_cpu_seconds(data_dir: Path) -> float:
    """CPU time (user + system) of the cluster's postmaster and every backend and worker it started."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        pid, parent = int(entry.name), int(fields[1])
        if pid == postmaster or parent == postmaster:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


async def retain_notifyq(conn: asyncpg.Connection, rows: int) -> None:
    """Finished jobs as retention keeps them (written directly: the guard triggers are for producers)."""
    await conn.execute("SET session_replication_role = replica")
    await conn.execute(
        "INSERT INTO notifyq.jobs (task, state, attempts, max_attempts, run_at, started_at, finished_at)"
        " SELECT 'bench.noop', 'succeeded', 1, 20, now() - interval '8 days',"
        "        now() - make_interval(secs => i * 0.5), now() - make_interval(secs => i * 0.5)"
        " FROM generate_series(1, $1) AS i",
        rows,
        timeout=600,
    )
    await conn.execute("RESET session_replication_role")
    await conn.execute("VACUUM ANALYZE notifyq.jobs", timeout=600)


async def retain_pgqueuer(conn: asyncpg.Connection, rows: int) -> None:
    """pgqueuer moves a finished job out of its queue table into its log table: that is its history."""
    await conn.execute(
        "INSERT INTO pgqueuer_log (created, job_id, status, priority, entrypoint, aggregated)"
        " SELECT now() - make_interval(secs => i * 0.5), i, 'successful', 0, 'noop', true"
        " FROM generate_series(1, $1) AS i",
        rows,
        timeout=600,
    )
    await conn.execute("VACUUM ANALYZE pgqueuer_log", timeout=600)


async def wait_notifyq(conn: asyncpg.Connection, since: datetime, limit_s: float) -> tuple[float, int]:
    """Wait for the drain; (jobs/s from the first finish to the last, jobs finished)."""
    deadline = time.monotonic() + limit_s
    while await conn.fetchval(UNFINISHED):
        if time.monotonic() > deadline:
            raise TimeoutError("notifyq did not drain in time")
        await anyio.sleep(0.5)
    row = await conn.fetchrow(
        "SELECT count(*), min(finished_at), max(finished_at) FROM notifyq.jobs"
        " WHERE state = 'succeeded' AND finished_at >= $1",
        since,
    )
    return (row[0] - 1) / (row[2] - row[1]).total_seconds(), row[0]


async def drain_notifyq(
    jobs: int, retained: int, analyze: bool, concurrency: int, data_dir: Path, folder: Path
) -> dict[str, float]:
    dsn = await fresh_database()
    try:
        conn = await asyncpg.connect(dsn)
        try:
            if retained:
                await retain_notifyq(conn, retained)
            await insert_noops(conn, jobs)
            if analyze:
                await conn.execute("VACUUM ANALYZE notifyq.jobs", timeout=600)
            since = await conn.fetchval("SELECT clock_timestamp()")
            cpu = postgres_cpu_seconds(data_dir)
            wall = time.monotonic()
            with daemon(dsn, folder / "drain.log", wait_ready=False, concurrency=concurrency):
                rate, done = await wait_notifyq(conn, since, 300)
                # While the daemon's backends live: an exited process's CPU time is no longer counted.
                cpu_used = (postgres_cpu_seconds(data_dir) - cpu) / (time.monotonic() - wall)
        finally:
            await conn.close()
    finally:
        await drop_database(dsn)
    assert done == jobs, (done, jobs)
    return {"jobs_per_s": rate, "db_cpu_cores": cpu_used}


async def drain_pgqueuer(
    jobs: int, retained: int, analyze: bool, data_dir: Path, folder: Path
) -> dict[str, float]:
    async with peers.database("pgqueuer") as dsn, peers.peer_client("pgqueuer", dsn) as client:
        conn: asyncpg.Connection = client.conn  # type: ignore[attr-defined]
        if retained:
            await retain_pgqueuer(conn, retained)
        with anyio.fail_after(120):
            await client.enqueue_noops(jobs)
        if analyze:
            await conn.execute("VACUUM ANALYZE pgqueuer", timeout=600)
        since = await client.clock()
        cpu = postgres_cpu_seconds(data_dir)
        wall = time.monotonic()
        async with peers.worker("pgqueuer", "best", dsn, 50, folder / "pgqueuer.log"):
            deadline = time.monotonic() + 300
            while True:
                row = await conn.fetchrow(
                    "SELECT count(*), min(created), max(created) FROM pgqueuer_log"
                    " WHERE status = 'successful' AND created >= $1",
                    since,
                )
                if row[0] >= jobs:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pgqueuer finished {row[0]} of {jobs}")
                await anyio.sleep(0.5)
            cpu_used = (postgres_cpu_seconds(data_dir) - cpu) / (time.monotonic() - wall)
    return {"jobs_per_s": (row[0] - 1) / (row[2] - row[1]).total_seconds(), "db_cpu_cores": cpu_used}


def _median(runs: list[dict[str, float]]) -> dict[str, Any]:
    return {
        "runs": runs,
        **{f"median_{key}": statistics.median(r[key] for r in runs) for key in runs[0]},
    }


async def drain_case(args: argparse.Namespace, data_dir: Path, folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for retained in (0, args.retained):
        for analyze in (False, True):
            state = f"{'retained' if retained else 'empty'}_{'analyzed' if analyze else 'unanalyzed'}"
            runs: dict[str, list[dict[str, float]]] = {
                "notifyq_c50": [],
                "notifyq_c200": [],
                "pgqueuer_best": [],
            }
            for _ in range(args.runs):  # interleaved, so that a slow phase of the machine hits all alike
                runs["notifyq_c50"].append(
                    await drain_notifyq(args.jobs, retained, analyze, 50, data_dir, folder)
                )
                runs["notifyq_c200"].append(
                    await drain_notifyq(args.jobs, retained, analyze, 200, data_dir, folder)
                )
                runs["pgqueuer_best"].append(
                    await drain_pgqueuer(args.jobs, retained, analyze, data_dir, folder)
                )
            out[state] = {system: _median(r) for system, r in runs.items()}
            print(state, {s: round(v["median_jobs_per_s"]) for s, v in out[state].items()}, flush=True)
    return out


def _p99(buckets: dict[float, float]) -> float | None:
    """The 0.99 quantile of cumulative bucket counts, interpolated within its bucket (as Prometheus's
    histogram_quantile does)."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total == 0:
        return None
    rank = 0.99 * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(buckets[bound] - below, 1e-9)
        lower, below = bound, buckets[bound]
    return None


def _scrape(ports: list[int]) -> tuple[dict[str, dict[float, float]], float]:
    """Statement histograms summed over the daemons, by statement; and the successes they counted."""
    pattern = re.compile(
        r'notifyq_statement_duration_seconds_bucket\{le="([^"]+)",statement="([^"]+)"\} (\S+)'
    )
    done = re.compile(r'notifyq_jobs_completed_total\{[^}]*outcome="succeeded"[^}]*\} (\S+)')
    by_statement: dict[str, dict[float, float]] = {}
    succeeded = 0.0
    for port in ports:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        for le, statement, value in pattern.findall(text):
            bucket = by_statement.setdefault(statement, {})
            bucket[float(le)] = bucket.get(float(le), 0.0) + float(value)
        succeeded += sum(float(v) for v in done.findall(text))
    return by_statement, succeeded


def _merged(by_statement: dict[str, dict[float, float]], names: tuple[str, ...]) -> dict[float, float]:
    merged: dict[float, float] = {}
    for name in names:
        for le, count in by_statement.get(name, {}).items():
            merged[le] = merged.get(le, 0.0) + count
    return merged


async def daemons_run(count: int, jobs: int, data_dir: Path, folder: Path) -> dict[str, float]:
    dsn = await fresh_database()
    ports = [free_port() for _ in range(count)]
    try:
        conn = await asyncpg.connect(dsn)
        try:
            due = await conn.fetchval("SELECT clock_timestamp() + make_interval(secs => $1)", LEAD_SECONDS)
            await conn.execute(
                "INSERT INTO notifyq.jobs (task, run_at) SELECT 'bench.noop', $2 FROM generate_series(1, $1)",
                jobs,
                due,
            )
            await conn.execute("VACUUM ANALYZE notifyq.jobs")
            with ExitStack() as stack:
                for i, port in enumerate(ports):
                    stack.enter_context(
                        daemon(
                            dsn, folder / f"daemon-{i}.log", concurrency=50, http_address=f"127.0.0.1:{port}"
                        )
                    )
                if await conn.fetchval("SELECT clock_timestamp() > $1", due):
                    raise RuntimeError(f"{count} daemons took longer than {LEAD_SECONDS}s to start")
                await anyio.sleep(
                    max(0.0, (due - await conn.fetchval("SELECT clock_timestamp()")).total_seconds())
                )
                cpu = postgres_cpu_seconds(data_dir)
                wall = time.monotonic()
                rate, done = await wait_notifyq(conn, due, 300)
                cpu_used = (postgres_cpu_seconds(data_dir) - cpu) / (time.monotonic() - wall)
                by_statement, succeeded = _scrape(ports)
            reruns = await conn.fetchval(
                "SELECT count(*) FROM notifyq.jobs WHERE attempts <> 1 OR state <> 'succeeded'"
            )
        finally:
            await conn.close()
    finally:
        await drop_database(dsn)
    errors = sum(
        line.count('"level": "error"') + line.count('"level":"error"')
        for i in range(count)
        for line in (folder / f"daemon-{i}.log").read_text().splitlines()
    )
    claim = _p99(_merged(by_statement, ("claim_head", "claim_jobs")))
    outcome = _p99(_merged(by_statement, ("complete_succeeded", "record_outcomes")))
    begin = _p99(_merged(by_statement, ("begin_jobs",)))
    return {
        "jobs_per_s": rate,
        "db_cpu_cores": cpu_used,
        "claim_p99_ms": 1000 * (claim or 0.0),
        "outcome_p99_ms": 1000 * (outcome or 0.0),
        "begin_p99_ms": 1000 * (begin or 0.0),
        "finished": float(done),
        "successes_counted": succeeded,
        "jobs_not_run_exactly_once": float(reruns),
        "errors_logged": float(errors),
    }


async def daemons_case(args: argparse.Namespace, data_dir: Path, folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in (1, 2, 4, 8)}
    for _ in range(args.runs):
        for count in runs:
            runs[count].append(await daemons_run(count, args.jobs, data_dir, folder))
    for count, found in runs.items():
        out[str(count)] = _median(found)
        print(f"{count} daemons", round(out[str(count)]["median_jobs_per_s"]), flush=True)
    return out


async def _timed(conn: asyncpg.Connection, sql: str, *args: Any, repeat: int = 9) -> float:
    """Median ms of `sql` over `repeat` runs."""
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        await conn.fetch(sql, *args)
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


async def gauges_case(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for retained in (0, args.retained):
        dsn = await fresh_database()
        try:
            conn = await asyncpg.connect(dsn)
            try:
                if retained:
                    await retain_notifyq(conn, retained)
                await insert_noops(conn, args.jobs)
                await conn.execute("VACUUM ANALYZE notifyq.jobs")
                key = f"retained_{retained}"
                out[key] = {
                    "before_0006_ms": await _timed(conn, OLD_QUEUE_STATS),
                    "count_ms": await _timed(conn, "SELECT * FROM notifyq.queue_counts(0)"),
                    "shared_reading_ms": await _timed(conn, "SELECT * FROM notifyq.queue_counts(3600)"),
                }
                if not retained:
                    out["counts_per_interval"] = await _gauge_counts(conn, dsn, folder)
            finally:
                await conn.close()
        finally:
            await drop_database(dsn)
        print("gauges", out, flush=True)
    return out


async def _gauge_counts(conn: asyncpg.Connection, dsn: str, folder: Path) -> dict[str, float]:
    """Counts per interval with 1 and 8 daemons refreshing every second (pg_stat_user_functions)."""
    database = dsn.rsplit("/", 1)[1]
    await conn.execute(f"ALTER DATABASE {database} SET track_functions = 'all'")
    found: dict[str, float] = {}
    for count in (1, 8):
        with ExitStack() as stack:
            for i in range(count):
                stack.enter_context(
                    daemon(
                        dsn,
                        folder / f"gauges-{i}.log",
                        stats_interval_seconds=1,
                        concurrency=1,
                        queues="idle",
                    )
                )
            before = await _function_calls(conn)
            await anyio.sleep(30)
            after = await _function_calls(conn)
        found[f"daemons_{count}_counts_per_interval"] = (after[0] - before[0]) / 30
        found[f"daemons_{count}_readings_per_interval"] = (after[1] - before[1]) / 30
    return found


async def _function_calls(conn: asyncpg.Connection) -> tuple[int, int]:
    rows = {
        r["funcname"]: r["calls"]
        for r in await conn.fetch(
            "SELECT funcname, calls FROM pg_stat_user_functions WHERE schemaname = 'notifyq'"
            " AND funcname IN ('count_queues', 'queue_counts')"
        )
    }
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return rows.get("count_queues", 0), rows.get("queue_counts", 0)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--retained", type=int, default=1_000_000)
    parser.add_argument("--only", nargs="+", choices=CASES, default=list(CASES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nq-production-") as tmp:
        folder = Path(tmp)
        os.chmod(tmp, 0o755)  # the postgres user runs the cluster in a folder inside
        with production_cluster(folder) as cluster:
            os.environ["BENCH_ADMIN_DSN"] = cluster.dsn
            result: dict[str, Any] = {"settings": {"jobs": args.jobs, "retained": args.retained, **STOCK}}
            if "gauges" in args.only:
                result["gauges"] = await gauges_case(args, folder)
            if "daemons" in args.only:
                result["daemons"] = await daemons_case(args, cluster.data_dir, folder)
            if "wake" in args.only:
                ours = await notifyq_latency(200, folder)
                floor = await floor_latency(200)
                result["wake"] = {"notifyq_ms": summary(ours), "floor_ms": summary(floor)}
                print("wake", result["wake"], flush=True)
            if "idle" in args.only:
                result["idle"] = {
                    "statements_per_s_after_70s": await idle_rate(60, 70),
                    "statements_per_s_first_minute": await idle_rate(60, 5),
                }
                print("idle", result["idle"], flush=True)
            if "drain" in args.only:
                result["drain"] = await drain_case(args, cluster.data_dir, folder)
            emit("production", result)


if __name__ == "__main__":
    run(main)
