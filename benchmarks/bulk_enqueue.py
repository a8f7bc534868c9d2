"""bulk enqueue: rows/s for the ways a Python producer can add many jobs at once, each committed in one
transaction, median of runs. No daemon runs (the wake trigger checks once per transaction either way).

    python -m benchmarks.bulk_enqueue [--rows 20000] [--batch 1000] [--runs 3]

- enqueue_many: notifyq.enqueue_many() through the Python wrapper, `--batch` jobs per call;
- enqueue_many_one_call: the same, all rows in one call;
- copy: asyncpg's COPY into notifyq.jobs (no ids back, no dedup);
- executemany_enqueue: notifyq.enqueue() once per row, pipelined by asyncpg's executemany;
- insert_select: one INSERT ... SELECT from generate_series, the reference.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable

import asyncpg

from benchmarks.common import drop_database, emit, fresh_database, run
from notifyq import NewJob, enqueue_many, queries

Method = Callable[[asyncpg.Connection, int, int], Awaitable[None]]


async def by_enqueue_many(conn: asyncpg.Connection, rows: int, batch: int) -> None:
    for start in range(0, rows, batch):
        await enqueue_many(
            conn, [NewJob("bench.noop", {"n": i}) for i in range(start, min(rows, start + batch))]
        )


async def by_one_call(conn: asyncpg.Connection, rows: int, batch: int) -> None:
    await enqueue_many(conn, [NewJob("bench.noop", {"n": i}) for i in range(rows)])


async def by_copy(conn: asyncpg.Connection, rows: int, batch: int) -> None:
    await conn.copy_records_to_table(
        "jobs",
        schema_name="notifyq",
        columns=["task", "payload"],
        records=[("bench.noop", f'{{"n": {i}}}') for i in range(rows)],
    )


async def by_executemany(conn: asyncpg.Connection, rows: int, batch: int) -> None:
    await conn.executemany(
        queries.get("enqueue"),
        [("bench.noop", f'{{"n": {i}}}', "default", None, 0, None, None, None) for i in range(rows)],
    )


async def by_insert_select(conn: asyncpg.Connection, rows: int, batch: int) -> None:
    await conn.execute(
        "INSERT INTO notifyq.jobs (task, payload) SELECT 'bench.noop', jsonb_build_object('n', i)"
        " FROM generate_series(1, $1) AS i",
        rows,
    )


METHODS: dict[str, Method] = {
    "enqueue_many": by_enqueue_many,
    "enqueue_many_one_call": by_one_call,
    "copy": by_copy,
    "executemany_enqueue": by_executemany,
    "insert_select": by_insert_select,
}


async def one_run(method: Method, rows: int, batch: int) -> float:
    dsn = await fresh_database()
    try:
        conn = await asyncpg.connect(dsn)
        try:
            started = time.perf_counter()
            async with conn.transaction():
                await method(conn, rows, batch)
            elapsed = time.perf_counter() - started
            assert await conn.fetchval("SELECT count(*) FROM notifyq.jobs") == rows
        finally:
            await conn.close()
    finally:
        await drop_database(dsn)
    return rows / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = {}
    for name, method in METHODS.items():
        rates = [await one_run(method, args.rows, args.batch) for _ in range(args.runs)]
        results[name] = {
            "runs": [round(r) for r in rates],
            "rows_per_s_median": round(statistics.median(rates)),
        }
    emit("bulk_enqueue", {"rows": args.rows, "batch": args.batch, "methods": results})


if __name__ == "__main__":
    run(main)
