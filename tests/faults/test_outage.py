"""A Postgres that goes away (a throwaway cluster, never the shared server)."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from notifyq import migrate
from notifyq.devserver import PrivateCluster, free_port
from tests.apps.recorder import SCHEMA
from tests.support import DaemonProcess, wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def cluster(pg_tmp: Path) -> AsyncIterator[PrivateCluster]:
    c = PrivateCluster(pg_tmp / "pg", free_port())
    c.init()
    c.start()
    conn = await asyncpg.connect(c.dsn)
    try:
        await migrate.apply(conn)
        await conn.execute(SCHEMA)
    finally:
        await conn.close()
    yield c
    c.stop("immediate")


async def test_sigterm_with_the_database_gone_still_exits_in_time(
    cluster: PrivateCluster, pg_tmp: Path
) -> None:
    d = DaemonProcess(
        cluster.dsn,
        "tests.apps.recorder:registry",
        pg_tmp / "d.log",
        shutdown_timeout_seconds=1,
        lease_seconds=5,
    )
    try:
        await d.wait_event("daemon_ready")
        conn = await asyncpg.connect(cluster.dsn)
        try:
            await conn.execute(
                """INSERT INTO notifyq.jobs (task, payload) VALUES ('rec.work', '{"seconds": 60}')"""
            )
            await wait_for(lambda: conn.fetchval("SELECT count(*) FROM test_runs"), 10, "the job to start")
        finally:
            await conn.close()
        cluster.stop("immediate")
        started = time.monotonic()
        d.signal(signal.SIGTERM)
        code = d.wait(30)
        elapsed = time.monotonic() - started
    finally:
        d.close()
    assert code == 0
    # Drain (1 s) + outcome flush deadline (5 s) + worker unregister (at most 5 s), with room to spare.
    assert elapsed < 13, f"took {elapsed:.1f}s"
    assert d.events("outcomes_unwritten"), "the unwritten release was reported"
