"""floor: pgbench running notifyq's own claim and complete statements, with no Python in the loop: the
most jobs/s this Postgres can move through them, the ceiling for any daemon built on them.

    python -m benchmarks.floor [--batch 50] [--clients 1,2] [--seconds 10] [--rows 600000]

Each pgbench transaction claims `batch` jobs with `claim_jobs` (text from sql/queries/worker.sql) and
completes them with `complete_succeeded`, as the daemon does, on prepared statements.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import asyncpg

from benchmarks.common import drop_database, emit, fresh_database, insert_noops, pgbench, run
from notifyq import queries

WORKER = "00000000-0000-0000-0000-000000000001"


def script(batch: int) -> str:
    """One claim then one complete. pgbench variables stand in for the daemon's bound parameters."""
    claim = queries.get("claim_jobs").strip().rstrip(";")
    for number, value in {
        "$10": str(1 << 40),  # the byte budget, first: "$1" would match its start
        "$1": "'{default}'",
        "$2": "'{bench.noop}'",
        "$3": "'{NULL}'",
        "$4": str(batch),
        "$5": "30",
        "$6": f"'{WORKER}'",
        "$7": "'{NULL}'",
        "$8": "'{NULL}'",
        "$9": "'{NULL}'",
    }.items():
        claim = claim.replace(number, value)
    complete = queries.get("complete_succeeded").strip().rstrip(";")
    complete = complete.replace("$1", ":ids").replace("$2", ":tokens")
    flat = " ".join(line.split("--")[0] for line in claim.splitlines())
    return (
        f"WITH c AS ({flat}) SELECT array_agg(id)::text AS ids, array_agg(lease_token)::text AS tokens "
        "FROM c \\gset\n" + " ".join(line.split("--")[0] for line in complete.splitlines()) + ";\n"
    )


async def floor_rate(batch: int, clients: int, seconds: int, rows: int, folder: Path) -> float:
    """Jobs/s pgbench moves through claim + complete, on a fresh table of `rows` queued jobs."""
    path = folder / "claim_complete.sql"
    path.write_text(script(batch))
    dsn = await fresh_database()
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await insert_noops(conn, rows)
            await conn.execute("VACUUM ANALYZE notifyq.jobs")
        finally:
            await conn.close()
        return pgbench(dsn, path, seconds, clients, "-M", "prepared") * batch
    finally:
        await drop_database(dsn)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--clients", default="1,2")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rows", type=int, default=600_000)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for clients in (int(c) for c in args.clients.split(",")):
            rate = await floor_rate(args.batch, clients, args.seconds, args.rows, Path(tmp))
            results[f"clients_{clients}"] = round(rate)
    emit("floor", {"batch": args.batch, "seconds": args.seconds, "jobs_per_s": results})


if __name__ == "__main__":
    run(main)
