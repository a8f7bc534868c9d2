"""wake latency: an idle daemon; one job inserted and committed every 20 ms; time from just before the
INSERT to the handler's first line, on one clock (CLOCK_MONOTONIC, shared by every process).

    python -m benchmarks.wake_latency [--samples 200]

Also measures the floor in the same run: plain asyncpg doing INSERT + NOTIFY on one connection and a
LISTENing connection that runs one claim per notification (notifyq's cheapest, `claim_head`, with the
daemon's asynchronous commit).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from benchmarks.common import daemon, drop_database, emit, fresh_database, run
from notifyq import queries


def summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)

    def q(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3)

    return {
        "p50": q(0.5),
        "p90": q(0.9),
        "p99": q(0.99),
        "max": round(ordered[-1], 3),
        "mean": round(statistics.fmean(ordered), 3),
    }


async def notifyq_latency(samples: int, folder: Path, **settings: Any) -> list[float]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    os.environ["BENCH_UDP_PORT"] = str(sock.getsockname()[1])
    dsn = await fresh_database()
    out: list[float] = []
    try:
        with daemon(dsn, folder / "wake.log", concurrency=10, poll_interval_seconds=30, **settings):
            conn = await asyncpg.connect(dsn)
            try:
                for i in range(samples + 10):
                    t0 = time.monotonic()
                    await conn.execute("INSERT INTO notifyq.jobs (task) VALUES ('bench.wake')")
                    data = await anyio.to_thread.run_sync(lambda: sock.recv(256))
                    started = float(data.split()[1])
                    if i >= 10:  # warm-up: prepared statements, first connections
                        out.append((started - t0) * 1000)
                    await anyio.sleep(0.02)
            finally:
                await conn.close()
    finally:
        sock.close()
        await drop_database(dsn)
    return out


async def floor_latency(samples: int) -> list[float]:
    """INSERT + NOTIFY, and a listener that claims once per notification: the least any design can do."""
    dsn = await fresh_database()
    out: list[float] = []
    try:
        producer = await asyncpg.connect(dsn)
        listener = await asyncpg.connect(dsn)
        # As the daemon's own pool: its claim does not wait for the WAL flush.
        claimer = await asyncpg.connect(dsn, server_settings={"synchronous_commit": "off"})
        got: Any = None
        claimed = anyio.Event()

        def on_notify(*_: Any) -> None:
            nonlocal got
            got = anyio.Event()
            claimed.set()

        await listener.add_listener("bench", on_notify)
        claim = queries.get("claim_head")  # notifyq's cheapest claim, the one it runs after a wake-up
        worker = "00000000-0000-0000-0000-000000000001"
        for i in range(samples + 10):
            claimed = anyio.Event()
            t0 = time.monotonic()
            await producer.execute("INSERT INTO notifyq.jobs (task) VALUES ('bench.wake'); NOTIFY bench")
            await claimed.wait()
            await claimer.fetch(claim, "default", ["bench.wake"], [None], 10, 30.0, worker, 1 << 40)
            if i >= 10:
                out.append((time.monotonic() - t0) * 1000)
            await anyio.sleep(0.02)
        for c in (producer, listener, claimer):
            await c.close()
    finally:
        await drop_database(dsn)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ours = await notifyq_latency(args.samples, Path(tmp))
    floor = await floor_latency(args.samples)
    emit(
        "wake_latency",
        {
            "samples": args.samples,
            "notifyq_ms": summary(ours),
            "floor_ms": summary(floor),
            "p50_over_floor_ms": round(summary(ours)["p50"] - summary(floor)["p50"], 3),
        },
    )


if __name__ == "__main__":
    run(main)
