"""drain: N no-op jobs inserted in bulk, then one daemon process runs them all; jobs/s, median of runs.

python -m benchmarks.drain [--jobs 20000] [--runs 3] [--concurrency 50] [--prefetch N] [--set KEY=VALUE]

Also reports the daemon's resident memory (min/max) sampled while the last run drained.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from benchmarks.common import daemon, drop_database, emit, fresh_database, insert_noops, run

# Both read a small partial index (jobs_claim_idx, jobs_running_idx), never the whole table.
UNFINISHED = (
    "SELECT EXISTS (SELECT 1 FROM notifyq.jobs WHERE state = 'queued')"
    " OR EXISTS (SELECT 1 FROM notifyq.jobs WHERE state = 'running')"
)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def one_run(
    jobs: int, concurrency: int, folder: Path, rss: list[float] | None = None, **settings: Any
) -> float:
    """One drain of `jobs` no-op jobs; jobs/s. `settings` are extra daemon settings (prefetch=...);
    the daemon's resident memory is sampled into `rss` (MB) while it drains."""
    dsn = await fresh_database()
    rss = [] if rss is None else rss
    try:
        with daemon(
            dsn, folder / "drain.log", concurrency=concurrency, poll_interval_seconds=1, **settings
        ) as proc:
            conn = await asyncpg.connect(dsn)
            try:
                await insert_noops(conn, jobs)
                committed = await conn.fetchval("SELECT clock_timestamp()")
                # Waiting only; the figure comes from database timestamps, not from this loop. A count(*)
                # here read the whole table every turn and took a fifth of a core from the drain.
                while await conn.fetchval(UNFINISHED):
                    rss.append(rss_mb(proc.pid))
                    await anyio.sleep(0.5)
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
    parser.add_argument("--prefetch", type=int, default=None, help="daemon setting; its default if unset")
    parser.add_argument("--set", action="append", default=[], help="another daemon setting, KEY=VALUE")
    args = parser.parse_args()
    extra: dict[str, Any] = {} if args.prefetch is None else {"prefetch": args.prefetch}
    extra.update(item.split("=", 1) for item in args.set)
    rates, rss = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            rss = []
            rates.append(await one_run(args.jobs, args.concurrency, Path(tmp), rss, **extra))
    suffix = "".join(f"_{k}_{v}" for k, v in sorted(extra.items()))
    emit(
        f"drain_{args.jobs}{suffix}",
        {
            "jobs": args.jobs,
            "concurrency": args.concurrency,
            **extra,
            "runs": [round(r) for r in rates],
            "jobs_per_s_median": round(statistics.median(rates)),
            "daemon_rss_mb_last_run": {
                "min": round(min(rss), 1),
                "max": round(max(rss), 1),
                "samples": len(rss),
            }
            if rss
            else None,
        },
    )


if __name__ == "__main__":
    run(main)
