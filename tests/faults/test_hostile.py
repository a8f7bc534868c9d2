"""What a hostile review broke, as real daemon processes (issue classes 1, 2, 7 and 8): handlers that give
bad values or break their runner, a job that kills its worker with others buffered behind it, a daemon
frozen past its leases, and one daemon claiming a job whose older run it is still winding down. Every
scenario ends with the checker, which also asserts that no job ends `failed` without having started and
that no job runs twice at once in one daemon."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import asyncpg
import pytest

from tests import support
from tests.apps.recorder import SCHEMA
from tests.faults import checker
from tests.faults.fleet import Fleet
from tests.support import DaemonProcess, wait_for

APP = "tests.apps.hostile:registry"
FINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture
async def db(conn: asyncpg.Connection) -> asyncpg.Connection:
    await conn.execute(SCHEMA)
    await checker.install(conn)
    return conn


def spawn(daemons: list[DaemonProcess], tmp_path: Path, dsn: str, **settings: object) -> DaemonProcess:
    return support.spawn(daemons, tmp_path, dsn, app=APP, **settings)


async def insert(
    conn: asyncpg.Connection,
    task: str,
    payloads: list[str],
    *,
    priority: int = 0,
    max_attempts: int | None = None,
) -> list[int]:
    # max_attempts named only when given: a row that does not set it takes its task's.
    columns, value = ("", "") if max_attempts is None else (", max_attempts", f", {int(max_attempts)}")
    rows = await conn.fetch(
        f"INSERT INTO notifyq.jobs (task, payload, priority{columns})"
        f" SELECT $1, p::jsonb, $2{value} FROM unnest($3::text[]) WITH ORDINALITY AS t(p, n) ORDER BY n"
        " RETURNING id",
        task,
        priority,
        payloads,
    )
    return [r["id"] for r in rows]


async def all_final(
    conn: asyncpg.Connection, ids: list[int], timeout: float, fleet: Fleet | None = None
) -> None:
    async def done() -> bool:
        if fleet is not None:
            fleet.respawn_dead()
        left = await conn.fetchval(
            "SELECT count(*) FROM notifyq.jobs WHERE id = ANY($1) AND state::text <> ALL($2)", ids, FINAL
        )
        return left == 0

    await wait_for(done, timeout, f"{len(ids)} jobs to finish", every=0.1)


def assert_clean(report: checker.Report) -> None:
    report.save()
    assert report.violations == [], report.violations


@pytest.mark.timeout(60)
async def test_bad_values_from_handlers_fail_their_job_and_nothing_else(
    db: asyncpg.Connection, db_dsn: str, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    """Class 1: Retry/Snooze/Discard given bad values, exceptions whose __str__ raises even SystemExit,
    KeyboardInterrupt or CancelledError: each fails its own job (max_attempts 1) with a message naming
    the problem, while a job running beside them finishes and the daemon stays up."""
    from tests.apps.hostile import _BAD

    d = spawn(daemons, tmp_path, db_dsn, concurrency=4, lease_seconds=5, poll_interval_seconds=0.5)
    await d.wait_event("daemon_ready")
    [beside] = await insert(db, "rec.work", ['{"seconds": 2}'])
    await wait_for(lambda: db.fetchval("SELECT count(*) FROM test_runs"), 10, "the job beside them to start")
    how = sorted(_BAD)
    bad = await insert(db, "hostile.bad", [f'{{"how": "{h}"}}' for h in how])
    await all_final(db, [beside, *bad], 30)
    assert d.proc.poll() is None, "the daemon is still up"
    rows = await db.fetch(
        "SELECT id, state::text AS state, payload->>'how' AS how, last_error FROM notifyq.jobs WHERE id = ANY($1)",
        bad,
    )
    errors = {r["how"]: r["last_error"].splitlines()[0] for r in rows if r["state"] == "failed"}
    assert sorted(errors) == how, {r["how"]: r["state"] for r in rows}
    assert errors["snooze_string"] == (
        "TypeError: Snooze(seconds) must be a number of seconds or a timedelta (got str)"
    )
    assert errors["snooze_huge"].startswith("ValueError: Snooze(seconds) must be between 0 and 315360000")
    assert errors["retry_delay_huge"].startswith("ValueError: Retry(delay) must be between 0 and 315360000")
    assert errors["retry_reason_unprintable"] == "TypeError: Retry(reason) must be a str (got _BadReason)"
    for raised in ("SystemExit", "KeyboardInterrupt", "CancelledError"):
        key = {
            "SystemExit": "system_exit",
            "KeyboardInterrupt": "keyboard_interrupt",
            "CancelledError": "cancelled",
        }
        assert (
            errors[f"str_raises_{key[raised]}"] == f"_StrRaises: <unprintable: its __str__ raised {raised}>"
        )
    outcomes = {"hostile.bad": "failed"}
    assert_clean(await checker.check(db, {beside, *bad}, checker.Report("hostile_values"), outcomes=outcomes))


@pytest.mark.timeout(60)
async def test_errors_raised_outside_any_runner_are_json_log_lines(
    db: asyncpg.Connection, db_dsn: str, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    """An exception in a thread a handler started, or in a __del__, and a library's warning (asyncpg
    warns so about a password file others can read) are JSON lines, the exceptions with their traceback
    inside: never bare text on stderr breaking the log stream."""
    d = spawn(daemons, tmp_path, db_dsn, concurrency=1)
    await d.wait_event("daemon_ready")
    ids = await insert(db, "hostile.stray_errors", ["{}"])
    await all_final(db, ids, 20)
    thread = await d.wait_event("thread_exception")
    assert thread["level"] == "error" and thread["thread"] == "handler-thread"
    assert "raised in a handler's own thread" in thread["exception"]
    [unraisable] = d.events("unraisable_exception")
    assert "raised in __del__" in unraisable["exception"]
    [warning] = [e for e in d.events() if e.get("logger") == "py.warnings"]
    assert "a library's warning" in warning["event"]
    lines = d.log_path.read_text().splitlines()
    assert all(line.startswith("{") for line in lines), [line for line in lines if not line.startswith("{")]


@pytest.mark.timeout(60)
async def test_a_handler_that_cancels_its_own_task_breaks_no_runner(
    db: asyncpg.Connection, db_dsn: str, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    """Class 2: more self-cancelling handlers than runners, then ordinary jobs. Every runner survives
    (each interruption is logged and counted), so the ordinary jobs all run; none is stranded in the
    buffer behind runners that are gone."""
    d = spawn(daemons, tmp_path, db_dsn, concurrency=2, prefetch=4, poll_interval_seconds=0.5)
    await d.wait_event("daemon_ready")
    hostile = await insert(db, "hostile.cancel_self", ["{}"] * 6, priority=1)
    work = await insert(db, "rec.work", ["{}"] * 20)
    await all_final(db, hostile + work, 30)
    assert d.proc.poll() is None
    assert len(d.events("runner_interrupted")) == 6
    states = await db.fetch("SELECT state::text AS state, count(*) FROM notifyq.jobs GROUP BY 1")
    assert {r["state"]: r["count"] for r in states} == {"succeeded": 26}, "a handler that returned succeeded"
    outcomes = {"hostile.cancel_self": "succeeded"}
    assert_clean(await checker.check(db, {*hostile, *work}, checker.Report("cancel_self"), outcomes=outcomes))


@pytest.mark.timeout(120)
async def test_jobs_buffered_behind_a_worker_killer_lose_no_attempt(
    db: asyncpg.Connection, db_dsn: str, tmp_path: Path
) -> None:
    """Class 7: a poison job (SIGKILLs its daemon) claimed with ten max_attempts=1 jobs buffered behind
    it, again and again. The poison ends failed after its three attempts (and a first crash forgiven if
    its start was not yet recorded as entered); the buffered jobs, which never started while it killed
    their daemon, lose nothing and all succeed."""
    fleet = Fleet(db_dsn, tmp_path, 1, concurrency=1, prefetch=20, lease_seconds=1, poll_interval_seconds=0.5)
    try:
        await fleet.ready()
        poison = await insert(db, "rec.poison", ["{}"], priority=10)
        innocent = await insert(db, "rec.work", ["{}"] * 10, max_attempts=1)
        await all_final(db, poison + innocent, 90, fleet)
        rows = await db.fetch("SELECT task, state::text AS state, attempts FROM notifyq.jobs ORDER BY id")
        assert [tuple(r) for r in rows] == [("rec.poison", "failed", 3)] + [("rec.work", "succeeded", 1)] * 10
        report = checker.Report("poison_with_a_buffer", faults_injected=len(fleet.deaths))
        report = await checker.check(
            db, {*poison, *innocent}, report, deaths=fleet.deaths, journal=fleet.journal
        )
        unclear = await db.fetchval("SELECT unclear_crashes FROM notifyq.jobs WHERE id = $1", poison[0])
        assert len(fleet.deaths) == 3 + min(unclear, 1), "the poison killed a daemon on each of its runs"
        assert_clean(report)
    finally:
        fleet.close()


@pytest.mark.timeout(120)
async def test_a_worker_killer_takes_no_attempt_from_the_jobs_begun_beside_it(
    db: asyncpg.Connection, db_dsn: str, tmp_path: Path
) -> None:
    """Class 7, at concurrency: a job that ends its process before its first await, at the head of a
    backlog of thirty max_attempts=1 jobs, with ten runners. Its first run is begun in one statement
    with nine others, which it takes down before their handlers were called and before the daemon's mark
    could record them as entered. Rescue cannot tell them apart and forgives that unclear crash for all
    ten; from then on the killer starts alone, so each later crash is its own: it ends failed after its
    two attempts, and all thirty others succeed."""
    poison = await insert(db, "hostile.exit", ["{}"], priority=10)
    innocent = await insert(db, "rec.work", ["{}"] * 30, max_attempts=1)
    fleet = Fleet(
        db_dsn, tmp_path, 1, app=APP, concurrency=10, prefetch=40, lease_seconds=1, poll_interval_seconds=0.5
    )
    try:
        await all_final(db, poison + innocent, 90, fleet)
        rows = await db.fetch(
            "SELECT state::text AS state, attempts, count(*) FROM notifyq.jobs WHERE id = ANY($1) GROUP BY 1, 2",
            innocent,
        )
        assert [tuple(r) for r in rows] == [("succeeded", 1, 30)]
        killer = await db.fetchrow(
            "SELECT state::text AS state, attempts, unclear_crashes FROM notifyq.jobs WHERE id = $1",
            poison[0],
        )
        assert tuple(killer) == ("failed", 2, 3), "forgiven once, then its two attempts counted"
        begun_with_it = await db.fetchval(
            "SELECT count(*) FROM notifyq.jobs WHERE id = ANY($1) AND unclear_crashes = 1", innocent
        )
        assert begun_with_it >= 1, "the killer's first run was begun with others (the case under test)"
        report = checker.Report("killer_begun_with_others", faults_injected=len(fleet.deaths))
        report = await checker.check(
            db,
            {*poison, *innocent},
            report,
            deaths=fleet.deaths,
            journal=fleet.journal,
            outcomes={"hostile.exit": "failed"},
        )
        report.figures |= {"begun_with_the_killer": begun_with_it}
        assert len(fleet.deaths) == 3, "the killer took down one daemon per run, three runs"
        assert_clean(report)
    finally:
        fleet.close()


@pytest.mark.timeout(90)
async def test_a_frozen_daemon_starts_no_buffered_job_it_no_longer_owns(
    db: asyncpg.Connection, db_dsn: str, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    """Class 8: a daemon working through short jobs with more buffered is frozen (SIGSTOP) past its
    lease; another daemon rescues and finishes them all. Resumed, the frozen daemon's handler sleep and
    its heartbeat are both overdue: whichever runs first, it starts none of its buffered jobs, whose
    leases are no longer its own (the checker: no run begins after its lease ended)."""
    settings = {"concurrency": 1, "prefetch": 10, "lease_seconds": 2, "poll_interval_seconds": 0.5}
    frozen = spawn(daemons, tmp_path, db_dsn, **settings)
    await frozen.wait_event("daemon_ready")
    ids = await insert(db, "rec.work", ['{"seconds": 0.1}'] * 40)
    await wait_for(lambda: db.fetchval("SELECT count(*) >= 3 FROM test_runs"), 15, "a few runs")
    frozen.signal(signal.SIGSTOP)
    stopped_at = await db.fetchval("SELECT clock_timestamp()")
    try:
        spawn(daemons, tmp_path, db_dsn, **settings)
        await all_final(db, ids, 40)
    finally:
        frozen.signal(signal.SIGCONT)

    async def heartbeat_after_resume_holds_nothing() -> bool:
        return bool(
            await db.fetchval(
                "SELECT running = 0 FROM notifyq.workers WHERE pid = $1 AND last_seen > $2",
                frozen.pid,
                stopped_at,
            )
        )

    await wait_for(heartbeat_after_resume_holds_nothing, 15, "the resumed daemon to hold no lease")
    assert frozen.proc.poll() is None
    report = await checker.check(db, set(ids), checker.Report("frozen_buffer", faults_injected=1))
    report.figures["frozen_buffer_refused"] = len(frozen.events("job_not_started"))
    assert_clean(report)


@pytest.mark.timeout(90)
async def test_jobs_begun_beside_a_loop_blocker_do_not_run_once_their_leases_are_gone(
    db: asyncpg.Connection, db_dsn: str, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    """Class 8: a handler blocks its daemon's event loop for three leases right after it and two others
    were begun in one statement. Another daemon rescues and runs the two meanwhile. When the loop comes
    back, the blocked daemon's runners reach the two begun jobs before its heartbeat learns anything: they
    must see that the leases went unconfirmed too long and not run them (the checker: no run begins after
    its lease ended, no two runs overlap)."""
    settings = {"concurrency": 3, "prefetch": 3, "lease_seconds": 2, "poll_interval_seconds": 0.5}
    blocked = spawn(daemons, tmp_path, db_dsn, **settings)
    await blocked.wait_event("daemon_ready")
    async with db.transaction():  # one claim, one begin for all three
        blocker = await insert(db, "hostile.block_loop", ['{"seconds": 6}'], priority=1)
        ids = await insert(db, "rec.work", ["{}"] * 2)
    await wait_for(
        lambda: db.fetchval("SELECT count(*) = 3 FROM notifyq.jobs WHERE started_at IS NOT NULL"),
        10,
        "all three begun",
    )
    rescuer = spawn(daemons, tmp_path, db_dsn, **settings)
    await all_final(db, blocker + ids, 40)
    await blocked.wait_event("job_not_started", timeout=20)
    refused = blocked.events("job_not_started")
    assert sorted(e["job_id"] for e in refused) == ids
    assert all(e["reason"] == "lease unconfirmed for too long since its begin" for e in refused)
    runs = await db.fetch("SELECT job_id, pid FROM test_runs ORDER BY job_id")
    assert [(r["job_id"], r["pid"]) for r in runs] == [(i, rescuer.pid) for i in ids]
    report = await checker.check(db, {*blocker, *ids}, checker.Report("loop_blocker", faults_injected=1))
    assert_clean(report)


@pytest.mark.timeout(90)
async def test_one_daemon_never_runs_one_job_twice_at_once(
    db: asyncpg.Connection, db_dsn: str, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    """Class 8: a daemon running a sync handler (which no cancel can stop) is frozen past its lease; a
    daemon of another queue rescues the job, and the resumed daemon claims it anew while its first run is
    still in its thread. The new run waits for the old one to end: never two runs at once."""
    runner = spawn(daemons, tmp_path, db_dsn, concurrency=2, lease_seconds=2, poll_interval_seconds=0.5)
    await runner.wait_event("daemon_ready")
    [job_id] = await insert(db, "hostile.sync_work", ['{"seconds": 6}'])
    await wait_for(lambda: db.fetchval("SELECT count(*) FROM test_runs"), 10, "the first run to start")
    runner.signal(signal.SIGSTOP)
    try:
        rescuer = spawn(daemons, tmp_path, db_dsn, queues="other", lease_seconds=2)
        await rescuer.wait_event("job_rescued", timeout=20, job_id=job_id)
        rescuer.signal(signal.SIGKILL)
        rescuer.wait(10)
    finally:
        runner.signal(signal.SIGCONT)
    await all_final(db, [job_id], 40)
    runs = await db.fetch("SELECT pid FROM test_runs WHERE job_id = $1", job_id)
    assert [r["pid"] for r in runs] == [runner.pid, runner.pid], "the resumed daemon ran it again"
    report = await checker.check(
        db, {job_id}, checker.Report("same_daemon_twice"), outcomes={"hostile.sync_work": "succeeded"}
    )
    assert_clean(report)
    await runner.wait_event("job_claimed_while_running", timeout=5, job_id=job_id)


@pytest.mark.timeout(60)
async def test_an_exception_that_ends_the_event_loop_is_an_error_and_gives_the_buffer_back(
    db: asyncpg.Connection, db_dsn: str, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    """A handler's loop callback raising SystemExit(0) ends the event loop, beyond any runner's reach.
    The daemon says so at error level, exits 1 (never 0: systemd must restart it), and gives its
    buffered jobs back at once rather than leaving them to lease expiry (60 s here)."""
    d = spawn(daemons, tmp_path, db_dsn, concurrency=1, prefetch=10, lease_seconds=60)
    await d.wait_event("daemon_ready")
    async with db.transaction():  # one claim takes all six: the bomb runs with five buffered
        await insert(db, "hostile.loop_bomb", ["{}"], priority=1)
        buffered = await insert(db, "rec.work", ["{}"] * 5)
    code = await anyio.to_thread.run_sync(d.proc.wait, 30)
    assert code == 1
    [crash] = d.events("daemon_crashed")
    assert crash["level"] == "error" and crash["buffered"] == 5, crash
    assert d.events("daemon_stopped") == [], "not a clean stop"
    rows = await db.fetch(
        "SELECT state::text AS state, attempts FROM notifyq.jobs WHERE id = ANY($1)", buffered
    )
    assert [tuple(r) for r in rows] == [("queued", 0)] * 5, "back in the queue at once, nothing spent"


@pytest.mark.timeout(90)
async def test_a_row_locked_by_another_session_stalls_only_its_own_job(
    db: asyncpg.Connection, db_dsn: str, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    """Found by a hostile review: one job's row held locked by another session (an operator's open
    transaction, a report's SELECT ... FOR UPDATE) for several leases. The heartbeat, begins and outcome
    batches skip that row instead of waiting on it, so every other job keeps its lease, its outcome is
    written once, and none runs twice; the locked job's outcome is written once the lock goes."""
    d = spawn(
        daemons, tmp_path, db_dsn, concurrency=4, prefetch=10, lease_seconds=3, poll_interval_seconds=0.5
    )
    await d.wait_event("daemon_ready")
    ids = await insert(db, "rec.work", ['{"seconds": 0.3}'] * 60)
    holder = await asyncpg.connect(db_dsn)
    try:

        async def a_started_job() -> int | None:
            job_id: int | None = await db.fetchval(
                "SELECT id FROM notifyq.jobs WHERE state = 'running' AND started_at IS NOT NULL ORDER BY id LIMIT 1"
            )
            return job_id

        locked = await wait_for(a_started_job, 15, "a job to start")
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT 1 FROM notifyq.jobs WHERE id = $1 FOR UPDATE", locked)

        async def others_done() -> bool:
            left = await db.fetchval(
                "SELECT count(*) FROM notifyq.jobs WHERE id = ANY($1) AND id <> $2 AND state <> 'succeeded'",
                ids,
                locked,
            )
            return left == 0

        await wait_for(others_done, 40, "every other job to finish while the row stays locked")
        await tx.rollback()
    finally:
        await holder.close()
    await all_final(db, ids, 30)
    twice = await db.fetch(
        "SELECT job_id, count(*) FROM test_runs WHERE job_id <> $1 GROUP BY 1 HAVING count(*) > 1", locked
    )
    assert twice == [], f"jobs beside the locked one ran again: {[tuple(r) for r in twice]}"
    lost = [e for e in d.events("outcome_dropped_lease_lost") if e["job_id"] != locked]
    assert lost == [], lost
    report = await checker.check(db, set(ids), checker.Report("row_locked_elsewhere"))
    report.figures["locked_job_runs"] = await db.fetchval(
        "SELECT count(*) FROM test_runs WHERE job_id = $1", locked
    )
    assert_clean(report)
