"""drain: N no-op jobs inserted in bulk, then one daemon process runs them all; jobs/s, median of runs.

python -m benchmarks.drain [--jobs 20000] [--runs 3] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import anyio
import asyncpg

from benchmarks.common import daemon, drop_database, emit, fresh_database, run


async def one_run(jobs: int, concurrency: int, folder: Path) -> float:
    dsn = await fresh_database()
    try:
        with daemon(dsn, folder / "drain.log", concurrency=concurrency, poll_interval_seconds=1):
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(
                    "INSERT INTO notifyq.jobs (task) SELECT 'bench.noop' FROM generate_series(1, $1)",
                    jobs,
                    timeout=600,
                )
                committed = await conn.fetchval("SELECT clock_timestamp()")
                # Waiting only; the figure comes from database timestamps, not from this loop.
                while await conn.fetchval("SELECT count(*) FROM notifyq.jobs WHERE state <> 'succeeded'"):  # noqa: ASYNC110
                    await anyio.sleep(0.2)
                last = await conn.fetchval("SELECT max(finished_at) FROM notifyq.jobs")
            finally:
                await conn.close()
        # From the commit of the bulk insert (when the daemon can first see the jobs) to the last outcome.
        return jobs / (last - committed).total_seconds()
    finally:
        await drop_database(dsn)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            rates.append(await one_run(args.jobs, args.concurrency, Path(tmp)))
    emit(
        f"drain_{args.jobs}",
        {
            "jobs": args.jobs,
            "concurrency": args.concurrency,
            "runs": [round(r) for r in rates],
            "jobs_per_s_median": round(statistics.median(rates)),
        },
    )


if __name__ == "__main__":
    run(main)
