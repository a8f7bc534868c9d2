"""Periodic jobs under SIGKILL: four daemons on two every-second schedules, one of them killed and
restarted every few seconds; every tick must be made exactly once, none missing, none doubled.

CI runs 6 seconds; `--soak` runs the two minutes the closing figures come from."""

from __future__ import annotations

import random
import signal
from datetime import timedelta
from pathlib import Path

import anyio
import asyncpg
import pytest

from tests.support import DaemonProcess, spawn

pytestmark = pytest.mark.timeout(400)
APP = "tests.apps.periodic:registry"
SCHEDULES = ("every-second", "every-second-plain")


async def test_four_daemons_with_sigkills_make_every_tick_once(
    conn: asyncpg.Connection, db_dsn: str, tmp_path: Path, daemons: list[DaemonProcess], soak: bool
) -> None:
    seconds = 120 if soak else 6
    rng = random.Random(14)
    for _ in range(4):
        spawn(daemons, tmp_path, db_dsn, app=APP, concurrency=4)
    for d in daemons:
        await d.wait_event("daemon_ready", 30)
    alive = list(range(4))
    kills = 0
    deadline = anyio.current_time() + seconds
    while anyio.current_time() < deadline:
        await anyio.sleep(rng.uniform(1.0, 4.0))
        victim = rng.choice(alive)
        daemons[victim].signal(signal.SIGKILL)
        daemons[victim].wait(10)
        kills += 1
        # Restarted at once, as systemd would; the other three carry the ticks meanwhile.
        replacement = spawn(daemons, tmp_path, db_dsn, app=APP, concurrency=4)
        alive[alive.index(victim)] = len(daemons) - 1
        await replacement.wait_event("daemon_ready", 30)
    for i in alive:
        daemons[i].signal(signal.SIGTERM)
    for i in alive:
        assert daemons[i].wait(30) == 0
    figures = {}
    for name in SCHEDULES:
        since = await conn.fetchval("SELECT since FROM notifyq.schedules WHERE name = $1", name)
        last = await conn.fetchval("SELECT last_tick FROM notifyq.schedules WHERE name = $1", name)
        rows = await conn.fetch(
            "SELECT schedule_tick, count(*) AS n FROM notifyq.jobs WHERE schedule = $1 GROUP BY 1 ORDER BY 1", name
        )
        made = [r[0] for r in rows]
        expected = int((last - since.replace(microsecond=0)).total_seconds())
        doubled = sum(r[1] - 1 for r in rows)
        missing = [t for t in (since.replace(microsecond=0) + timedelta(seconds=i + 1) for i in range(expected))
                   if t not in set(made)]  # fmt: skip
        backfilled = await conn.fetchval(
            "SELECT count(*) FROM notifyq.jobs WHERE schedule = $1 AND backfilled", name
        )
        figures[name] = {"expected": expected, "enqueued": len(made), "doubled": doubled,
                         "missed": len(missing), "backfilled": backfilled}  # fmt: skip
        assert doubled == 0 and missing == [], (name, figures[name], missing[:5])
        assert expected >= seconds - 5, figures[name]
    print(f"\n{kills} SIGKILLs in {seconds} s: {figures}")
