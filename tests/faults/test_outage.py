"""A Postgres that goes away (a throwaway cluster, never the shared server)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import asyncpg
import pytest

from notifyq.devserver import PrivateCluster
from tests.faults import checker
from tests.support import DaemonProcess, wait_for

pytestmark = pytest.mark.timeout(90)


async def test_sigterm_with_the_database_gone_still_exits_in_time(
    cluster: PrivateCluster, pg_tmp: Path
) -> None:
    journal = pg_tmp / "journal"
    journal.mkdir()
    env = {"NOTIFYQ_RECORDER_JOURNAL": str(journal)}
    d = DaemonProcess(
        cluster.dsn,
        "tests.apps.recorder:registry",
        pg_tmp / "d.log",
        extra_env=env,
        shutdown_timeout_seconds=1,
        lease_seconds=5,
    )
    try:
        await d.wait_event("daemon_ready")
        conn = await asyncpg.connect(cluster.dsn)
        try:
            # 60 s on its first attempt, so it is still running when the database goes; at once after.
            job_id = await conn.fetchval(
                """INSERT INTO notifyq.jobs (task, payload) VALUES ('rec.work', '{"first_seconds": 60}')"""
                " RETURNING id"
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

    # The release could not be written: the job is rescued once its lease ends, and runs elsewhere.
    cluster.start()
    other = DaemonProcess(cluster.dsn, "tests.apps.recorder:registry", pg_tmp / "e.log", extra_env=env)
    conn = await asyncpg.connect(cluster.dsn)
    try:
        await other.wait_event("daemon_ready")
        await wait_for(
            lambda: conn.fetchval("SELECT state = 'succeeded' FROM notifyq.jobs WHERE id = $1", job_id),
            30,
            "the job to be rescued and succeed",
        )
        report = await checker.check(
            conn, {job_id}, checker.Report("outage_sigterm", faults_injected=1), journal=journal
        )
    finally:
        await conn.close()
        other.close()
    report.save()
    assert report.violations == [], report.violations
