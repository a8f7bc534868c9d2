"""Daemons as real processes under real faults: SIGKILL, SIGSTOP, SIGTERM, and a four-way claim race."""

from __future__ import annotations

import re
import signal
import urllib.request
from pathlib import Path

import anyio
import asyncpg
import pytest

from tests.apps.recorder import SCHEMA
from tests.faults import checker
from tests.support import spawn, wait_for


@pytest.fixture
async def runs(conn: asyncpg.Connection) -> asyncpg.Connection:
    await conn.execute(SCHEMA)
    return conn


async def insert_jobs(conn: asyncpg.Connection, n: int, payload: str = "{}") -> list[int]:
    rows = await conn.fetch(
        "INSERT INTO notifyq.jobs (task, payload) SELECT 'rec.work', $2::jsonb FROM generate_series(1, $1) "
        "RETURNING id",
        n,
        payload,
    )
    return [r["id"] for r in rows]


async def job(conn: asyncpg.Connection, job_id: int) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow("SELECT * FROM notifyq.jobs WHERE id = $1", job_id)
    return row


@pytest.mark.timeout(180)
async def test_claim_race_four_daemons_5000_jobs(
    runs: asyncpg.Connection, db_dsn: str, daemons: list, tmp_path: Path
) -> None:
    for _ in range(4):
        spawn(daemons, tmp_path, db_dsn, concurrency=16, poll_interval_seconds=1)
    for d in daemons:
        await d.wait_event("daemon_ready")
    ids = await insert_jobs(runs, 5000)

    async def all_done() -> bool:
        return bool(await runs.fetchval("SELECT count(*) = 5000 FROM notifyq.jobs WHERE state = 'succeeded'"))

    await wait_for(all_done, 150, "5000 jobs to succeed", every=0.2)
    assert await runs.fetchval("SELECT count(*) FROM notifyq.jobs WHERE state <> 'succeeded'") == 0
    assert await runs.fetchval("SELECT max(attempts) FROM notifyq.jobs") == 1
    per_job = await runs.fetch("SELECT job_id, count(*) AS n FROM test_runs GROUP BY job_id")
    assert len(per_job) == len(ids), "every job ran"
    assert {r["n"] for r in per_job} == {1}, "no job ran twice"
    overlapping = await runs.fetchval(
        "SELECT count(*) FROM test_runs a JOIN test_runs b ON a.job_id = b.job_id AND a.ctid < b.ctid "
        "AND tstzrange(a.started_at, a.finished_at) && tstzrange(b.started_at, b.finished_at)"
    )
    assert overlapping == 0
    pids = await runs.fetchval("SELECT count(DISTINCT pid) FROM test_runs")
    assert pids >= 2, "the work was shared between daemons"
    # The recorded result is the pid of the run that succeeded: success was recorded by its runner.
    mismatched = await runs.fetchval(
        "SELECT count(*) FROM notifyq.jobs j JOIN test_runs r ON r.job_id = j.id WHERE j.result::int <> r.pid"
    )
    assert mismatched == 0


@pytest.mark.timeout(60)
async def test_sigkill_mid_handler_job_is_rescued_and_finishes_elsewhere(
    runs: asyncpg.Connection, db_dsn: str, daemons: list, tmp_path: Path
) -> None:
    victim = spawn(daemons, tmp_path, db_dsn, lease_seconds=2, poll_interval_seconds=1)
    await victim.wait_event("daemon_ready")
    [job_id] = await insert_jobs(runs, 1, '{"first_seconds": 60}')
    await wait_for(
        lambda: runs.fetchval("SELECT count(*) FROM test_runs WHERE job_id = $1", job_id),
        10,
        "the first run to start",
    )
    # The daemon's heartbeat records that the handler was called (its entered_through mark).
    await wait_for(
        lambda: runs.fetchval(
            "SELECT w.entered_through >= j.started_at FROM notifyq.jobs AS j"
            " JOIN notifyq.workers AS w ON w.id = j.worker_id WHERE j.id = $1",
            job_id,
        ),
        10,
        "the mark to cover the run",
    )
    victim.signal(signal.SIGKILL)
    victim.wait(10)
    rescuer = spawn(daemons, tmp_path, db_dsn, lease_seconds=2, poll_interval_seconds=1)
    await rescuer.wait_event("daemon_ready")

    async def succeeded() -> bool:
        return (await job(runs, job_id))["state"] == "succeeded"

    await wait_for(succeeded, 15, "the rescued job to succeed")
    row = await job(runs, job_id)
    assert (row["attempts"], row["unclear_crashes"]) == (2, 0), "the killed run ran: it was counted"
    assert row["result"] == str(rescuer.pid)
    assert "LeaseExpired" in row["last_error"]
    assert await rescuer.wait_event("job_rescued", job_id=job_id)


@pytest.mark.timeout(60)
async def test_sigstop_past_the_lease_is_fenced(
    runs: asyncpg.Connection, db_dsn: str, daemons: list, tmp_path: Path
) -> None:
    await checker.install(runs)
    stale = spawn(
        daemons, tmp_path, db_dsn, lease_seconds=2, poll_interval_seconds=1, http_address="127.0.0.1:0"
    )
    await stale.wait_event("daemon_ready")
    port = await stale.http_port()  # bound by the daemon itself: no port picked ahead and raced for
    # Long enough that the stale handler is still running when it wakes up, whatever the timing.
    [job_id] = await insert_jobs(runs, 1, '{"first_seconds": 60}')
    await wait_for(
        lambda: runs.fetchval("SELECT count(*) FROM test_runs WHERE job_id = $1", job_id),
        10,
        "the first run to start",
    )
    stale.signal(signal.SIGSTOP)
    other = spawn(daemons, tmp_path, db_dsn, lease_seconds=2, poll_interval_seconds=1)
    await other.wait_event("daemon_ready")

    async def succeeded() -> bool:
        return (await job(runs, job_id))["state"] == "succeeded"

    await wait_for(succeeded, 15, "the other daemon to finish the job")
    before = await job(runs, job_id)
    assert before["result"] == str(other.pid)
    stale.signal(signal.SIGCONT)
    # The stale daemon learns at its next heartbeat that the lease is gone and cancels its handler.
    await stale.wait_event("lease_lost_cancelling", timeout=10, job_id=job_id)
    await stale.wait_event("lease_lost", timeout=10, job_id=job_id)
    after = await job(runs, job_id)
    assert (after["state"], after["result"], after["attempts"], after["finished_at"]) == (
        "succeeded",
        str(other.pid),
        1,  # the frozen daemon's run was the job's first crash: forgiven
        before["finished_at"],
    ), "the stale daemon wrote nothing"
    stale_run = await runs.fetchrow(
        "SELECT finished_at FROM test_runs WHERE job_id = $1 AND pid = $2", job_id, stale.pid
    )
    assert stale_run["finished_at"] is None, "the stale handler was cancelled, not run to the end"
    metrics = await anyio.to_thread.run_sync(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    )
    lost = float(re.search(r"^notifyq_leases_lost_total (\S+)$", metrics, re.M).group(1))  # type: ignore[union-attr]
    report = await checker.check(runs, {job_id}, checker.Report("sigstop_fencing", faults_injected=1))
    report.figures = {"notifyq_leases_lost_total": lost}
    report.save()
    assert lost >= 1, "notifyq_leases_lost_total counts the lost lease"
    assert report.violations == []


@pytest.mark.timeout(60)
async def test_sigterm_drains_running_jobs(
    runs: asyncpg.Connection, db_dsn: str, daemons: list, tmp_path: Path
) -> None:
    d = spawn(daemons, tmp_path, db_dsn, shutdown_timeout_seconds=20)
    await d.wait_event("daemon_ready")
    ids = await insert_jobs(runs, 3, '{"seconds": 1}')
    await wait_for(lambda: runs.fetchval("SELECT count(*) = 3 FROM test_runs"), 10, "three runs started")
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0
    rows = await runs.fetch("SELECT state::text, attempts FROM notifyq.jobs WHERE id = ANY($1)", ids)
    assert [(r["state"], r["attempts"]) for r in rows] == [("succeeded", 1)] * 3
    assert await runs.fetchval("SELECT count(*) FROM notifyq.workers") == 0, "worker row removed"


@pytest.mark.timeout(60)
async def test_sigterm_past_the_deadline_releases_without_spending_an_attempt(
    runs: asyncpg.Connection, db_dsn: str, daemons: list, tmp_path: Path
) -> None:
    d = spawn(daemons, tmp_path, db_dsn, shutdown_timeout_seconds=0.5)
    await d.wait_event("daemon_ready")
    [job_id] = await insert_jobs(runs, 1, '{"first_seconds": 60}')
    await wait_for(lambda: runs.fetchval("SELECT count(*) FROM test_runs"), 10, "the run to start")
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0
    row = await job(runs, job_id)
    assert (row["state"], row["attempts"], row["lease_token"]) == ("queued", 0, None)
    # The re-run is attempt 1 again, which would sleep 60 s: let it finish at once this time.
    await runs.execute("UPDATE notifyq.jobs SET payload = '{}' WHERE id = $1", job_id)
    other = spawn(daemons, tmp_path, db_dsn)
    await other.wait_event("daemon_ready")

    async def succeeded() -> bool:
        return (await job(runs, job_id))["state"] == "succeeded"

    await wait_for(succeeded, 15, "the released job to run elsewhere")
    row = await job(runs, job_id)
    assert row["attempts"] == 1, "the released run did not count"
    assert row["result"] == str(other.pid)


@pytest.mark.timeout(30)
async def test_second_signal_stops_at_once(
    runs: asyncpg.Connection, db_dsn: str, daemons: list, tmp_path: Path
) -> None:
    d = spawn(daemons, tmp_path, db_dsn, shutdown_timeout_seconds=60)
    await d.wait_event("daemon_ready")
    [job_id] = await insert_jobs(runs, 1, '{"seconds": 60}')
    await wait_for(lambda: runs.fetchval("SELECT count(*) FROM test_runs"), 10, "the run to start")
    d.signal(signal.SIGTERM)
    await d.wait_event("draining")
    d.signal(signal.SIGINT)
    assert d.wait(10) == 0
    row = await job(runs, job_id)
    assert (row["state"], row["attempts"]) == ("queued", 0)
