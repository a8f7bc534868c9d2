"""A Postgres that goes away (a throwaway cluster, never the shared server)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import asyncpg
import pytest

from notifyq.devserver import PrivateCluster
from tests.support import DaemonProcess, wait_for

pytestmark = pytest.mark.timeout(90)


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
    # Expected: drain (1 s) + outcome flush deadline (5 s) + worker unregister (at most 5 s). Asserted: a
    # liveness bound with room for a loaded machine (no hang waiting for the database), still well below
    # systemd's TimeoutStopSec (> 35 s).
    assert elapsed < 20, f"took {elapsed:.1f}s"
    assert d.events("outcomes_unwritten"), "the unwritten release was reported"
