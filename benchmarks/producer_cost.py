"""producer cost: 8 concurrent producers inserting single rows (pgbench, 10 s each), with
(a) no wake-up trigger, (b) an always-NOTIFY trigger, (c) notifyq's gated trigger beside a busy daemon,
and (d) the gated trigger beside an idle daemon (every insert notifies). During (c) a LISTENing
connection counts the notifications that reached it: with a busy daemon every one of them is a wasted
NOTIFY (and its commit-time lock), so the count shows how often the gate's probes misread each other.

    python -m benchmarks.producer_cost [--seconds 10] [--clients 8]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import asyncpg

from benchmarks.common import daemon, drop_database, emit, fresh_database, pgbench, run

ALWAYS_NOTIFY = """
CREATE OR REPLACE FUNCTION notifyq.jobs_wake() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('notifyq', NEW.queue);
    RETURN NULL;
END $$
"""


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        script = folder / "insert.sql"
        # A task no handler serves: rows stay queued and never change what the daemon is doing.
        script.write_text("INSERT INTO notifyq.jobs (task) VALUES ('bench.unserved');\n")
        dsn = await fresh_database()
        try:
            conn = await asyncpg.connect(dsn)
            await conn.execute("ALTER TABLE notifyq.jobs DISABLE TRIGGER jobs_wake_insert")
            results["a_no_wake_trigger"] = pgbench(dsn, script, args.seconds, args.clients)
            await conn.execute("ALTER TABLE notifyq.jobs ENABLE TRIGGER jobs_wake_insert")
            # The idle daemon first: with its idle locks held, the gated trigger notifies on every commit.
            with daemon(dsn, folder / "idle.log", concurrency=2):
                results["d_gated_daemon_idle"] = pgbench(dsn, script, args.seconds, args.clients)
                inserted_before_c = await conn.fetchval(
                    "SELECT count(*) FROM notifyq.jobs WHERE task = 'bench.unserved'"
                )
                # Now make it busy: both slots blocked, so it holds no idle locks.
                await conn.execute("INSERT INTO notifyq.jobs (task) VALUES ('bench.block'), ('bench.block')")
                while await conn.fetchval("SELECT count(*) FROM notifyq.jobs WHERE state = 'running'") < 2:
                    await __import__("anyio").sleep(0.05)
                heard: list[str] = []
                listener = await asyncpg.connect(dsn)
                await listener.add_listener("notifyq", lambda *args: heard.append(args[3]))
                results["c_gated_daemon_busy"] = pgbench(dsn, script, args.seconds, args.clients)
                await listener.execute("SELECT 1")  # notifications that arrived meanwhile are dispatched
                await listener.close()
                notified = len(heard)
                inserted = await conn.fetchval(
                    "SELECT count(*) FROM notifyq.jobs WHERE task = 'bench.unserved'"
                )
            # The baseline again, on the table as it is now (it grew by every run above): the
            # figure is the mean of both, so neither the empty table nor the grown one favours it.
            await conn.execute("ALTER TABLE notifyq.jobs DISABLE TRIGGER jobs_wake_insert")
            again = pgbench(dsn, script, args.seconds, args.clients)
            results["a_no_wake_trigger"] = (results["a_no_wake_trigger"] + again) / 2
            await conn.execute("ALTER TABLE notifyq.jobs ENABLE TRIGGER jobs_wake_insert")
            await conn.execute(ALWAYS_NOTIFY)
            results["b_always_notify"] = pgbench(dsn, script, args.seconds, args.clients)
            await conn.close()
        finally:
            await drop_database(dsn)
    base = results["a_no_wake_trigger"]
    emit(
        "producer_cost",
        {
            "clients": args.clients,
            "seconds": args.seconds,
            "rows_per_s": {k: round(v) for k, v in sorted(results.items())},
            "share_of_no_trigger": {k: round(v / base, 3) for k, v in sorted(results.items())},
            "c_wasted_notifies": notified,
            "c_commits": inserted - inserted_before_c,
        },
    )


if __name__ == "__main__":
    run(main)
