"""steady state: producers offer a fixed rate of single-row inserts for a while; does the daemon keep up,
and how long from just before each INSERT to its handler's first line (CLOCK_MONOTONIC, one clock for
every process on the machine).

    python -m benchmarks.steady_state [--rates 1000,5000] [--seconds 30] [--producers 8] [--per-insert 1]
                                      [--driver python|pgbench]

Each producer inserts on a fixed schedule (its share of the rate); a producer that falls behind its
schedule catches up without sleeping, and the rate actually offered is reported beside the target.
`--driver pgbench` offers single-row inserts from pgbench's `--rate` instead of Python (8 Python
producers in one process could not offer 5,000 single-row commits/s here); its rows carry the wall
clock of `clock_timestamp()`, which is the clock `time.time()` reads on the same machine.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from benchmarks.common import daemon, drop_database, emit, fresh_database, run
from benchmarks.wake_latency import summary
from notifyq.devserver import pg_bindir

INSERT = (
    "INSERT INTO notifyq.jobs (task, payload) VALUES ('bench.stamp', jsonb_build_object('t', $1::float8))"
)
# Several jobs in one INSERT (and one commit), all stamped with the same time.
INSERT_MANY = (
    "INSERT INTO notifyq.jobs (task, payload)"
    " SELECT 'bench.stamp', jsonb_build_object('t', $1::float8) FROM generate_series(1, $2)"
)

INSERT_WALL = (
    "INSERT INTO notifyq.jobs (task, payload)"
    " VALUES ('bench.stamp_wall', jsonb_build_object('w', extract(epoch FROM clock_timestamp())));\n"
)


class Receiver:
    """Collects the (start - insert) latencies the handler sends, on a thread of its own."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.latencies_ms: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(64)
            except TimeoutError:
                continue
            self.latencies_ms.append(float(data) * 1000)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


async def producer(dsn: str, rate: float, seconds: float, sent: list[int], per_insert: int = 1) -> None:
    """Insert on a fixed schedule: `rate` jobs/s, `per_insert` jobs per statement."""
    conn = await asyncpg.connect(dsn)
    try:
        start = time.monotonic()
        n = 0
        while True:
            due = start + n / rate
            now = time.monotonic()
            if due - start >= seconds:
                break
            if due > now:
                await anyio.sleep(due - now)
            if per_insert == 1:
                await conn.execute(INSERT, time.monotonic())
            else:
                await conn.execute(INSERT_MANY, time.monotonic(), per_insert)
            n += per_insert
        sent.append(n)
    finally:
        await conn.close()


def pgbench_producers(dsn: str, rate: int, seconds: float, producers: int, folder: Path) -> tuple[int, str]:
    """pgbench offering `rate` single-row inserts/s from `producers` clients; (rows, schedule lag line)."""
    script = folder / "insert.sql"
    script.write_text(INSERT_WALL)
    command = [str(pg_bindir() / "pgbench"), "-n", "-c", str(producers), "-j", "2", "-R", str(rate)]
    command += ["-T", str(int(seconds)), "-f", str(script), dsn]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    found = re.search(r"number of transactions actually processed: (\d+)", done.stdout)
    lag = re.search(r"rate limit schedule lag: .*", done.stdout)
    if found is None:
        raise RuntimeError(f"pgbench printed no count: {done.stdout[-500:]} {done.stderr[-500:]}")
    return int(found.group(1)), lag.group(0) if lag else ""


async def one_rate(
    rate: int, seconds: float, producers: int, folder: Path, per_insert: int = 1, driver: str = "python"
) -> dict[str, Any]:
    receiver = Receiver()
    os.environ["BENCH_UDP_PORT"] = str(receiver.port)
    dsn = await fresh_database()
    try:
        with daemon(dsn, folder / f"steady_{rate}.log", concurrency=50):
            sent: list[int] = []
            lag = ""
            t0 = time.monotonic()
            if driver == "pgbench":
                total, lag = await anyio.to_thread.run_sync(
                    pgbench_producers, dsn, rate, seconds, producers, folder
                )
            else:
                async with anyio.create_task_group() as tg:
                    for _ in range(producers):
                        tg.start_soon(producer, dsn, rate / producers, seconds, sent, per_insert)
                total = sum(sent)
            offered_for = time.monotonic() - t0
            # Kept up: every job started within a few seconds of the producers stopping.
            deadline = time.monotonic() + 10
            while len(receiver.latencies_ms) < total and time.monotonic() < deadline:  # noqa: ASYNC110
                await anyio.sleep(0.05)
            backlog_after = total - len(receiver.latencies_ms)
    finally:
        receiver.close()
        await drop_database(dsn)
    lat = receiver.latencies_ms
    return {
        "target_rate": rate,
        "driver": driver,
        "jobs_per_insert": 1 if driver == "pgbench" else per_insert,
        "pgbench_schedule_lag": lag,
        "offered_rate": round(total / offered_for),
        "jobs": total,
        "started_within_10s_after": len(lat),
        "kept_up": backlog_after == 0 and summary(lat)["p99"] < 1000,
        "insert_to_start_ms": summary(lat),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="1000,5000")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument(
        "--per-insert", type=int, default=1, help="jobs per INSERT (one commit); single rows by default"
    )
    parser.add_argument("--driver", choices=("python", "pgbench"), default="python")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rate in (int(r) for r in args.rates.split(",")):
            results.append(
                await one_rate(rate, args.seconds, args.producers, Path(tmp), args.per_insert, args.driver)
            )
    emit("steady_state", {"seconds": args.seconds, "producers": args.producers, "rates": results})


if __name__ == "__main__":
    run(main)
