"""idle cost: transactions per second an idle daemon causes (each of its statements is one), over 60 s,
read from pg_stat_database for its own database, after a warm-up.

    python -m benchmarks.idle_cost [--seconds 60] [--warmup 70]

The warm-up covers the daemon's first minute: until each pooled connection has prepared the statements
it runs, every first use of a statement on a connection costs one more transaction (the Parse), and
asyncpg introspects types once per connection. Measured here, that first minute costs about 1.1 to 1.2
transactions/s where the steady state costs 0.7. `--warmup 5` measures the first minute instead.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import anyio
import asyncpg

from benchmarks.common import daemon, drop_database, emit, fresh_database, run

COMMITS = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"


async def idle_rate(seconds: float, warmup: float) -> float:
    """Transactions per second an idle daemon causes over `seconds`, after `warmup` seconds."""
    dsn = await fresh_database()
    try:
        with tempfile.TemporaryDirectory() as tmp, daemon(dsn, Path(tmp) / "idle.log"):
            await anyio.sleep(warmup)
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute("SELECT pg_stat_force_next_flush()")
                await anyio.sleep(1.5)
                before, t0 = await conn.fetchval(COMMITS), time.monotonic()
                await anyio.sleep(seconds)
                await anyio.sleep(1.5)  # let the daemon's backends flush their counters
                after, t1 = await conn.fetchval(COMMITS), time.monotonic()
            finally:
                await conn.close()
    finally:
        await drop_database(dsn)
    # Our own two reads are in the count; take them out.
    return float((after - before - 2) / (t1 - t0 - 1.5))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--warmup", type=float, default=70)
    args = parser.parse_args()
    per_s = await idle_rate(args.seconds, args.warmup)
    emit("idle_cost", {"seconds": args.seconds, "warmup": args.warmup, "statements_per_s": round(per_s, 3)})


if __name__ == "__main__":
    run(main)
