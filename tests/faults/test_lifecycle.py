"""A job's life in a real daemon process under real faults: a lease outlived, SIGTERM, the shutdown
deadline, a database outage during a run, large payloads, and the outcome buffer during an outage.

Each test is known to fail without the mechanism it covers (heartbeat extension, stop claiming on
SIGTERM, the attempt given back at the shutdown deadline, the prefetch byte budget, the completer's room
for unwritten outcomes); the one marked xfail shows a gap in the byte budget that is still open."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
from pathlib import Path

import anyio
import asyncpg
import pytest

from notifyq.devserver import PrivateCluster
from tests import support
from tests.apps.recorder import SCHEMA
from tests.faults import checker
from tests.support import DaemonProcess, wait_for

MIB = 1024 * 1024


@pytest.fixture
async def db(conn: asyncpg.Connection) -> asyncpg.Connection:
    await checker.install(conn)
    return conn


def spawn(daemons: list[DaemonProcess], folder: Path, dsn: str, **settings: object) -> DaemonProcess:
    """A daemon of the recorder app, whose handlers also journal each run's end in `folder`/journal (the
    checker reads it for the ends the database could not take during an outage)."""
    journal(folder).mkdir(exist_ok=True)
    env = {"NOTIFYQ_RECORDER_JOURNAL": str(journal(folder))}
    return support.spawn(daemons, folder, dsn, extra_env=env, **settings)


def journal(folder: Path) -> Path:
    return folder / "journal"


async def insert_jobs(conn: asyncpg.Connection, n: int, payload: str = "{}", priority: int = 0) -> list[int]:
    rows = await conn.fetch(
        "INSERT INTO notifyq.jobs (task, payload, priority)"
        " SELECT 'rec.work', $2::jsonb, $3 FROM generate_series(1, $1) RETURNING id",
        n,
        payload,
        priority,
    )
    return [r["id"] for r in rows]


async def job(conn: asyncpg.Connection, job_id: int) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow("SELECT * FROM notifyq.jobs WHERE id = $1", job_id)
    return row


async def all_final(conn: asyncpg.Connection, ids: list[int], timeout: float) -> None:
    async def done() -> bool:
        left = await conn.fetchval(
            "SELECT count(*) FROM notifyq.jobs"
            " WHERE id = ANY($1) AND state NOT IN ('succeeded', 'failed', 'cancelled')",
            ids,
        )
        return left == 0

    await wait_for(done, timeout, f"all {len(ids)} jobs to finish", every=0.2)


def assert_clean(report: checker.Report) -> None:
    report.save()
    assert report.violations == [], report.violations
    assert report.jobs_finished == report.jobs_offered


@pytest.mark.timeout(60)
async def test_job_longer_than_its_lease_runs_once_on_a_healthy_daemon(
    db: asyncpg.Connection, db_dsn: str, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    # Heartbeats every 2/3 s extend the 2 s lease; maintenance rescues expired leases every second, so a
    # heartbeat that fell short of the lease would show as a rescue and a second run.
    d = spawn(daemons, tmp_path, db_dsn, lease_seconds=2, poll_interval_seconds=1)
    await d.wait_event("daemon_ready")
    [job_id] = await insert_jobs(db, 1, '{"seconds": 5}')

    lost = ("lease_lost", "lease_lost_cancelling", "job_rescued", "outcome_dropped_lease_lost")

    async def succeeded() -> bool:
        # A lease the heartbeat let lapse is rescued and claimed again: fail at the first sign of it.
        row = await job(db, job_id)
        assert row["attempts"] <= 1 and row["last_error"] is None, f"the lease lapsed: {dict(row)}"
        signs = [e for e in d.events() if e.get("event") in lost]
        assert signs == [], f"the lease lapsed: {signs}"
        return row["state"] == "succeeded"

    await wait_for(succeeded, 30, "the job to succeed", every=0.1)
    row = await job(db, job_id)
    assert (row["attempts"], row["result"], row["last_error"]) == (1, str(d.pid), None)
    runs = await db.fetch(
        "SELECT pid, finished_at - started_at AS took FROM test_runs WHERE job_id = $1", job_id
    )
    assert len(runs) == 1, f"ran {len(runs)} times"
    assert runs[0]["took"].total_seconds() >= 5, "the one run went to the end"
    for event in lost:
        assert d.events(event) == [], f"{event} on a healthy daemon"
    audit = await db.fetch("SELECT event, state FROM test_audit WHERE job_id = $1 ORDER BY seq", job_id)
    assert [(a["event"], a["state"]) for a in audit] == [
        ("claim", "running"),
        ("begin", "running"),
        ("release", "succeeded"),
    ]
    assert_clean(await checker.check(db, {job_id}, checker.Report("lease_outlived")))


@pytest.mark.timeout(60)
async def test_sigterm_stops_claiming_at_once(
    db: asyncpg.Connection, db_dsn: str, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    # poll_interval 0.5: a daemon that kept claiming would find the late job within half a second even
    # without a NOTIFY, long before the running job (4 s) ends the drain.
    d = spawn(daemons, tmp_path, db_dsn, shutdown_timeout_seconds=30, poll_interval_seconds=0.5)
    await d.wait_event("daemon_ready")
    [running] = await insert_jobs(db, 1, '{"seconds": 4}')
    await wait_for(lambda: db.fetchval("SELECT count(*) FROM test_runs"), 10, "the run to start")
    d.signal(signal.SIGTERM)
    await d.wait_event("draining", running=1)
    [late] = await insert_jobs(db, 1)
    assert d.wait(30) == 0
    assert (await job(db, running))["state"] == "succeeded", "the running job was drained"
    row = await job(db, late)
    assert (row["state"], row["attempts"], row["lease_token"]) == ("queued", 0, None), "not claimed"
    assert await db.fetchval("SELECT count(*) FROM test_runs WHERE job_id = $1", late) == 0
    audit = await db.fetchval("SELECT count(*) FROM test_audit WHERE job_id = $1", late)
    assert audit == 0, "never claimed, not even into the prefetch buffer"

    other = spawn(daemons, tmp_path, db_dsn)
    await other.wait_event("daemon_ready")

    async def succeeded() -> bool:
        return (await job(db, late))["state"] == "succeeded"

    await wait_for(succeeded, 15, "the next daemon to run the late job", every=0.05)
    row = await job(db, late)
    assert (row["attempts"], row["result"]) == (1, str(other.pid))
    assert_clean(await checker.check(db, {running, late}, checker.Report("sigterm_stops_claiming")))


@pytest.mark.timeout(60)
async def test_shutdown_deadline_is_kept_and_the_job_released(
    db: asyncpg.Connection, db_dsn: str, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    d = spawn(daemons, tmp_path, db_dsn, shutdown_timeout_seconds=1)
    await d.wait_event("daemon_ready")
    [job_id] = await insert_jobs(db, 1, '{"seconds": 60}')
    await wait_for(lambda: db.fetchval("SELECT count(*) FROM test_runs"), 10, "the run to start")
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    code = d.wait(30)
    elapsed = time.monotonic() - started
    assert code == 0
    # 1 s of drain, then cancel, release, unregister and exit: a liveness bound with room for a loaded
    # machine, far below the 60 s the job would take.
    assert elapsed < 1 + 5, f"took {elapsed:.1f}s"
    assert d.events("cancelling_jobs"), "the deadline cancelled the job"
    row = await job(db, job_id)
    assert (row["state"], row["attempts"], row["lease_token"], row["worker_id"]) == ("queued", 0, None, None)
    run = await db.fetchrow("SELECT finished_at FROM test_runs WHERE job_id = $1", job_id)
    assert run["finished_at"] is None, "the handler was cut short"


@pytest.mark.timeout(90)
async def test_job_unfinished_in_an_outage_is_rescued_and_run_again(
    cluster: PrivateCluster, pg_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    # Lease 8 s: the daemon fences a lease it could not confirm for 5.3 s, at least 2.7 s into the outage,
    # well after the 1.5 s handler has returned.
    settings = {"lease_seconds": 8, "poll_interval_seconds": 1}
    conn = await asyncpg.connect(cluster.dsn)
    try:
        first = spawn(daemons, pg_tmp, cluster.dsn, **settings)
        await first.wait_event("daemon_ready")
        # Attempt 1 runs 1.5 s; its rescued re-run (attempt 2) is instant.
        [job_id] = await insert_jobs(conn, 1, '{"first_seconds": 1.5}')
        await wait_for(lambda: conn.fetchval("SELECT count(*) FROM test_runs"), 10, "the run to start")
    finally:
        await conn.close()
    cluster.stop("immediate")
    # The handler returns to a database that is gone: its success cannot be written.
    failed_write = await first.wait_event("outcomes_write_failed", timeout=20)
    assert failed_write["jobs"] == 1
    first.signal(signal.SIGKILL)
    first.wait(10)
    died_at = time.time()
    ends = [
        json.loads(line) for path in journal(pg_tmp).glob("*.jsonl") for line in path.read_text().splitlines()
    ]
    assert [(e["job_id"], e["pid"], e["returned"]) for e in ends] == [(job_id, first.pid, True)], (
        "the handler ran to its end before the daemon was killed"
    )
    assert first.events("lease_lost_cancelling") == [], "returned before the daemon fenced it"

    cluster.start()
    second = spawn(daemons, pg_tmp, cluster.dsn, **settings)
    await second.wait_event("daemon_ready", timeout=30)
    await second.wait_event("job_rescued", timeout=20, job_id=job_id)
    conn = await asyncpg.connect(cluster.dsn)
    try:
        await all_final(conn, [job_id], 20)
        row = await job(conn, job_id)
        assert (row["state"], row["result"]) == ("succeeded", str(second.pid))
        # The killed run counts if the daemon's mark had recorded it before the outage (a heartbeat),
        # else it was an unclear crash, forgiven: either way one attempt for the two runs.
        assert row["attempts"] + row["unclear_crashes"] == 2
        assert "LeaseExpired" in row["last_error"]
        runs = await conn.fetch(
            "SELECT pid, finished_at FROM test_runs WHERE job_id = $1 ORDER BY started_at", job_id
        )
        assert [(r["pid"], r["finished_at"] is not None) for r in runs] == [
            (first.pid, False),  # its end went to the journal only: the database was down
            (second.pid, True),
        ]
        report = await checker.check(
            conn,
            {job_id},
            checker.Report("outage_mid_run", faults_injected=1),
            deaths={first.pid: died_at},
            journal=journal(pg_tmp),
        )
    finally:
        await conn.close()
    assert_clean(report)


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a live process, in KiB: its resident memory now and at its peak."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found is not None, f"{name} not in /metrics"
    return float(found.group(1))


async def insert_large(conn: asyncpg.Connection, n: int) -> tuple[set[int], int]:
    """`n` jobs of ~1 MiB payloads (the most a payload may be), built in SQL; returns their ids and how
    many of them fit in the prefetch buffer's 16 MiB budget for payloads."""
    rows = await conn.fetch(
        "INSERT INTO notifyq.jobs (task, payload)"
        " SELECT 'rec.work', jsonb_build_object('seconds', 0.01, 'pad', repeat('0', 1000000))"
        " FROM generate_series(1, $1) RETURNING id, length(payload::text) AS size",
        n,
    )
    return {r["id"] for r in rows}, 16 * MIB // max(r["size"] for r in rows)


class Sampler:
    """What a daemon holds while it drains: its RSS (KiB), its prefetch target, and the ~1 MiB jobs it
    has claimed and not yet finished (claimed rows still `running` in the database)."""

    def __init__(self, d: DaemonProcess, conn: asyncpg.Connection, port: int) -> None:
        self.d, self.conn, self.port = d, conn, port
        self.rss: list[int] = []
        self.prefetch: list[float] = []
        self.held: list[int] = []

    async def drained(self) -> bool:
        self.rss.append(rss_kib(self.d.pid)[0])
        self.prefetch.append(await anyio.to_thread.run_sync(metric, self.port, "notifyq_prefetch_jobs"))
        counts = await self.conn.fetchrow(
            "SELECT count(*) FILTER (WHERE state = 'running' AND task = 'rec.work') AS held,"
            " count(*) FILTER (WHERE state NOT IN ('succeeded', 'failed')) AS left FROM notifyq.jobs"
        )
        self.held.append(counts["held"])
        return bool(counts["left"] == 0)

    def figures(self) -> dict[str, float]:
        return {
            "peak_rss_mib": round(rss_kib(self.d.pid)[1] / 1024, 1),
            "sampled_rss_mib_max": round(max(self.rss) / 1024, 1),
            "prefetch_target_max": max(self.prefetch),
            "large_jobs_held_max": max(self.held),
        }


async def spawn_for_large(
    daemons: list[DaemonProcess], tmp_path: Path, dsn: str, concurrency: int
) -> tuple[DaemonProcess, int]:
    """A daemon whose prefetch may grow far (so that only the byte budget can hold it), with /metrics."""
    d = spawn(
        daemons,
        tmp_path,
        dsn,
        concurrency=concurrency,
        prefetch_max=2000,
        poll_interval_seconds=1,
        http_address="127.0.0.1:0",
    )
    await d.wait_event("daemon_ready")
    return d, await d.http_port()


@pytest.mark.timeout(90)
async def test_large_payloads_stay_within_the_prefetch_byte_budget(
    db: asyncpg.Connection, db_dsn: str, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    jobs = 300  # ~300 MiB of payloads in all
    ids, budget = await insert_large(db, jobs)
    d, port = await spawn_for_large(daemons, tmp_path, db_dsn, concurrency=4)
    sampler = Sampler(d, db, port)
    await wait_for(sampler.drained, 75, "the large jobs to drain", every=0.02)
    figures = sampler.figures()
    assert d.proc.poll() is None, "the daemon is still up"
    report = await checker.check(db, ids, checker.Report("large_payloads"))
    report.figures |= {**figures, "prefetch_budget_jobs": budget}
    assert_clean(report)
    # The buffer grows beyond `prefetch` (10) only while its payloads fit in 16 MiB: 16 of these. (Its
    # rate-based sizing and the 1 s give-back of slow buffers keep it small here too, so the memory
    # alone would hardly tell a missing byte budget: the target itself must stay within it.)
    assert figures["prefetch_target_max"] <= budget, figures
    assert figures["peak_rss_mib"] < 200, figures


@pytest.mark.timeout(90)
async def test_large_payloads_due_during_a_drain_of_small_ones_stay_within_the_byte_budget(
    conn: asyncpg.Connection, db_dsn: str, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    await conn.execute(SCHEMA)
    large, budget = await insert_large(conn, 300)
    # Scheduled for later, ahead of the small ones once due (priority): the claim that finds them takes
    # nothing else.
    await conn.execute("UPDATE notifyq.jobs SET priority = 1, run_at = now() + interval '1 hour'")
    await conn.execute("INSERT INTO notifyq.jobs (task) SELECT 'rec.noop' FROM generate_series(1, 60000)")
    concurrency = 16
    d, port = await spawn_for_large(daemons, tmp_path, db_dsn, concurrency=concurrency)
    grown = 64  # four times the byte budget's 16 jobs: reached in seconds even at the begin-per-job rate

    async def grew() -> bool:
        return await anyio.to_thread.run_sync(metric, port, "notifyq_prefetch_jobs") >= grown

    try:
        await wait_for(grew, 30, f"the drain of small jobs to grow the prefetch buffer to {grown}")
    except AssertionError as exc:
        pytest.skip(f"this machine did not set the scenario up: {exc}")  # says nothing about the bug
    await conn.execute("UPDATE notifyq.jobs SET run_at = now() WHERE id = ANY($1)", list(large))
    sampler = Sampler(d, conn, port)

    async def done() -> bool:
        await sampler.drained()
        left = await conn.fetchval(
            "SELECT count(*) FROM notifyq.jobs WHERE id = ANY($1) AND state <> 'succeeded'", list(large)
        )
        return left == 0

    await wait_for(done, 60, "the large jobs to succeed", every=0.02)
    figures = sampler.figures()
    print(f"\nlarge payloads due during a drain of small ones: {figures}")
    # Running jobs, a buffer within the budget, and outcomes on their way to the database.
    assert figures["large_jobs_held_max"] <= concurrency + budget + concurrency, figures
    assert figures["peak_rss_mib"] < 200, figures


@pytest.mark.timeout(120)
async def test_large_payloads_drain_with_a_one_second_lease(
    db: asyncpg.Connection, db_dsn: str, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    """Issue 12, class 6: with lease_seconds=1 the statement timeout is a third of a second, which a
    claim of many ~1 MiB payloads overran every time, so nothing ran. Claims stay within a byte budget,
    and one that still times out halves the next: the backlog drains."""
    ids, _ = await insert_large(db, 100)
    d = spawn(daemons, tmp_path, db_dsn, concurrency=4, lease_seconds=1, poll_interval_seconds=0.5)
    await d.wait_event("daemon_ready")

    async def drained() -> bool:
        left = await db.fetchval(
            "SELECT count(*) FROM notifyq.jobs WHERE id = ANY($1) AND state <> 'succeeded'", list(ids)
        )
        return left == 0

    await wait_for(drained, 90, "the large jobs to succeed", every=0.2)
    assert d.proc.poll() is None
    report = await checker.check(db, ids, checker.Report("large_payloads_short_lease"))
    report.figures["claims_timed_out"] = len(d.events("claim_timed_out"))
    assert_clean(report)


@pytest.mark.timeout(120)
async def test_outcome_buffer_stops_the_runners_during_an_outage(
    cluster: PrivateCluster, pg_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    concurrency, buffered = 4, 1000
    room = max(2 * concurrency, 500)  # the completer's room for unwritten outcomes (daemon.py)

    def starts() -> int:  # handler runs begun, from the daemon's debug log (test_runs needs the database)
        return len(d.events("job_started"))

    conn = await asyncpg.connect(cluster.dsn)
    try:
        # One claim takes them all (concurrency + prefetch): the slow ones first (priority), then a
        # buffer of quick ones the runners reach only once the slow ones end, during the outage.
        slow = await insert_jobs(conn, concurrency, '{"first_seconds": 3}', priority=10)
        quick = await insert_jobs(conn, buffered)
        d = spawn(
            daemons,
            pg_tmp,
            cluster.dsn,
            concurrency=concurrency,
            prefetch=buffered,
            lease_seconds=20,  # the buffer is not fenced (13 s unconfirmed) during the outage below
            poll_interval_seconds=1,
            log_level="debug",
        )
        await d.wait_event("daemon_ready", timeout=30)
        await wait_for(
            lambda: conn.fetchval("SELECT count(*) = $1 FROM test_runs", concurrency),
            15,
            "the slow runs to start",
        )
        held = await conn.fetchval("SELECT count(*) FROM notifyq.jobs WHERE state = 'running'")
        assert held == concurrency + buffered, "all of them claimed before the outage"
    finally:
        await conn.close()
    cluster.stop("immediate")
    assert starts() == concurrency, "the outage began while the slow jobs ran"

    def taken() -> int:  # buffered jobs a runner took and could not start: handed back to the completer
        return len(d.events("job_not_started"))

    # The slow handlers return; then each buffered job a runner takes is refused at its start (no
    # database to count its attempt) and handed back; no outcome can be written, so the completer holds
    # them all, and once it is full the runners stop.
    held = await wait_for(
        lambda: taken() >= room // 2 and taken(), 30, "buffered jobs handed back", every=0.2
    )
    for _ in range(20):  # until no runner has taken another job for 1.5 s
        await anyio.sleep(1.5)
        if taken() == held:
            break
        held = taken()
    # The batch the completer was writing when the database went away is out of its queue; then its
    # queue fills to `room`, and each runner may have passed the check for room just before.
    [first_write] = [e for e in d.events("outcomes_write_failed") if e["attempt"] == 1]
    bound = first_write["jobs"] + room + concurrency
    assert d.proc.poll() is None, "the daemon rides out the outage"
    assert starts() == concurrency, "no job starts while its attempt cannot be counted"
    assert held <= bound, f"{held} jobs taken out of the buffer with {first_write['jobs']} + {room} held"
    assert held < buffered, "runners stopped with jobs still in the buffer"
    started = starts()

    cluster.start()
    conn = await asyncpg.connect(cluster.dsn)
    try:
        ids = slow + quick
        await all_final(conn, ids, 60)
        report = await checker.check(
            conn,
            set(ids),
            checker.Report("outcome_buffer_outage", faults_injected=1),
            journal=journal(pg_tmp),
        )
    finally:
        await conn.close()
    report.figures |= {
        "runs_started_in_outage": started - concurrency,
        "handed_back_in_outage": held,
        "bound": bound,
        "first_batch": first_write["jobs"],
    }
    assert_clean(report)
