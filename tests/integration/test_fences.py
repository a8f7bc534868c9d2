"""Lease fencing of every statement that writes a claimed row: begin_jobs, complete_succeeded,
record_outcomes, extend_leases (the heartbeat) and rescue_expired.

The statements run exactly as the daemon runs them (`queries.get`), on one session whose database clock
is pinned with `notifyq.now`, so leases expire by moving that clock instead of waiting. A write is
"nothing" when the statement returns no id and the row, down to its xmin, is what it was before.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from notifyq import queries

pytestmark = pytest.mark.timeout(30)

T0 = datetime(2031, 3, 1, 12, 0, tzinfo=UTC)
WORKER = uuid.UUID("00000000-0000-0000-0000-00000000f00d")
NO_BYTE_BUDGET = 1 << 40  # the claims' byte budget, too large to bind
LEASE = 30.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def set_clock(conn: asyncpg.Connection, when: datetime) -> None:
    """Pin notifyq.now() for this session (every worker statement reads it)."""
    await conn.execute(f"SET notifyq.now = '{when.isoformat()}'")
    assert await conn.fetchval("SELECT notifyq.now()") == when


async def snapshot(conn: asyncpg.Connection, job_id: int) -> dict[str, Any]:
    """The whole row plus its xmin: any write, even one that stores the same values, changes xmin."""
    row = await conn.fetchrow("SELECT xmin::text AS row_version, * FROM notifyq.jobs WHERE id = $1", job_id)
    assert row is not None
    return dict(row)


async def insert_job(conn: asyncpg.Connection, task: str = "t", max_attempts: int = 5) -> int:
    job_id: int = await conn.fetchval(
        "INSERT INTO notifyq.jobs (task, max_attempts) VALUES ($1, $2) RETURNING id", task, max_attempts
    )
    return job_id


async def begin(conn: asyncpg.Connection, job_id: int, token: uuid.UUID) -> list[int]:
    """The daemon's start of a claimed job (counts its attempt), as a runner sends it."""
    rows = await conn.fetch(queries.get("begin_jobs"), [job_id], [token], WORKER, None)
    return [r["id"] for r in rows]


async def rescue(conn: asyncpg.Connection, limit: int = 100) -> list[asyncpg.Record]:
    """The daemons' rescue, as one holding no lease of its own sends it."""
    rows: list[asyncpg.Record] = await conn.fetch(queries.get("rescue_expired"), limit, [], [])
    return rows


async def claim_head(
    conn: asyncpg.Connection,
    task: str = "t",
    lease: float = LEASE,
    max_attempts: int | None = None,
    start: bool = True,
) -> asyncpg.Record:
    """Claim one job and (unless `start` is False) start it, as a daemon's runner would."""
    rows = await conn.fetch(
        queries.get("claim_head"), "default", [task], [max_attempts], 1, lease, WORKER, NO_BYTE_BUDGET
    )
    assert len(rows) == 1, rows
    if start:
        assert await begin(conn, rows[0]["id"], rows[0]["lease_token"]) == [rows[0]["id"]]
    return rows[0]


async def claim_jobs(
    conn: asyncpg.Connection,
    task: str = "t",
    lease: float = LEASE,
    max_attempts: int | None = None,
    start: bool = True,
) -> asyncpg.Record:
    """claim_head through claim_jobs."""
    rows = await conn.fetch(
        queries.get("claim_jobs"),
        ["default"],
        [task],
        [max_attempts],
        1,
        lease,
        WORKER,
        [None],
        [None],
        [None],
        NO_BYTE_BUDGET,
    )
    assert len(rows) == 1, rows
    if start:
        assert await begin(conn, rows[0]["id"], rows[0]["lease_token"]) == [rows[0]["id"]]
    return rows[0]


# -- the writers, each exactly as the daemon sends it ---------------------------------------------------

Writer = Callable[[asyncpg.Connection, int, uuid.UUID], Awaitable[list[int]]]


async def complete(conn: asyncpg.Connection, job_id: int, token: uuid.UUID) -> list[int]:
    rows = await conn.fetch(queries.get("complete_succeeded"), [job_id], [token])
    return [r["id"] for r in rows]


def record(state: str, delay: float, refund: int, error: str | None, result: str | None) -> Writer:
    async def write(conn: asyncpg.Connection, job_id: int, token: uuid.UUID) -> list[int]:
        rows = await conn.fetch(
            queries.get("record_outcomes"), [job_id], [token], [state], [delay], [refund], [error], [result],
            [int(refund == 1 and delay > 0)],  # a snooze puts the job off; a release gives it back now
        )
        return [r["id"] for r in rows]

    return write


def heartbeat(lease: float = LEASE) -> Writer:
    async def write(conn: asyncpg.Connection, job_id: int, token: uuid.UUID) -> list[int]:
        return await extend(conn, {job_id: token}, lease)

    return write


# Each writer, and what the current token's write must leave in the row when it runs at `now` on a row
# claimed for its `attempts`th attempt.
def expect_succeeded(row: dict[str, Any], now: datetime, attempts: int) -> None:
    assert row["state"] == "succeeded"
    assert row["finished_at"] == now
    assert row["result"] is None
    assert row["attempts"] == attempts


def expect_succeeded_with_result(row: dict[str, Any], now: datetime, attempts: int) -> None:
    assert row["state"] == "succeeded"
    assert row["finished_at"] == now
    assert row["result"] == '{"rows": 42}'
    assert row["attempts"] == attempts


def expect_retried(row: dict[str, Any], now: datetime, attempts: int) -> None:
    assert row["state"] == "queued"
    assert row["run_at"] == now + timedelta(seconds=7.5)
    assert row["attempts"] == attempts  # a retry spends the attempt
    assert row["last_error"] == "RuntimeError: boom"
    assert row["finished_at"] is None


def expect_failed(row: dict[str, Any], now: datetime, attempts: int) -> None:
    assert row["state"] == "failed"
    assert row["finished_at"] == now
    assert row["attempts"] == attempts
    assert row["last_error"] == "RuntimeError: final"


def expect_snoozed(row: dict[str, Any], now: datetime, attempts: int) -> None:
    assert row["state"] == "queued"
    assert row["run_at"] == now + timedelta(seconds=60)
    assert row["attempts"] == attempts - 1  # a snooze gives the attempt back
    assert row["snoozes"] == 1
    assert row["finished_at"] is None


def expect_released(row: dict[str, Any], now: datetime, attempts: int) -> None:
    assert row["state"] == "queued"
    assert row["run_at"] == now
    assert row["attempts"] == attempts - 1  # a shutdown release gives the attempt back
    assert row["snoozes"] == 0
    assert row["finished_at"] is None


FINALIZERS: dict[str, tuple[Writer, Callable[[dict[str, Any], datetime, int], None]]] = {
    "complete_succeeded": (complete, expect_succeeded),
    "record_success_with_result": (
        record("succeeded", 0.0, 0, None, '{"rows": 42}'),
        expect_succeeded_with_result,
    ),
    "record_retry": (record("queued", 7.5, 0, "RuntimeError: boom", None), expect_retried),
    "record_failure": (record("failed", 0.0, 0, "RuntimeError: final", None), expect_failed),
    "record_snooze": (record("queued", 60.0, 1, None, None), expect_snoozed),
    "record_release": (record("queued", 0.0, 1, None, None), expect_released),
}


async def stale_and_current_tokens(conn: asyncpg.Connection) -> tuple[int, uuid.UUID, uuid.UUID]:
    """A job claimed (claim_head), lost to lease expiry and rescue, and claimed again (claim_jobs):
    returns its id, the stale token of the first claim and the current token of the second. The lost
    run was its first crash, so the second claim is its attempt 1 again."""
    await set_clock(conn, T0)
    job_id = await insert_job(conn)
    first = await claim_head(conn)
    assert first["id"] == job_id and first["attempts"] == 1
    await set_clock(conn, at(LEASE + 1))
    rescued = await rescue(conn)
    assert [(r["id"], r["state"]) for r in rescued] == [(job_id, "queued")]
    second = await claim_jobs(conn)
    assert second["id"] == job_id and second["attempts"] == 1
    assert second["lease_token"] != first["lease_token"]
    return job_id, first["lease_token"], second["lease_token"]


async def assert_writes_nothing(
    conn: asyncpg.Connection, write: Writer, job_id: int, token: uuid.UUID
) -> None:
    before = await snapshot(conn, job_id)
    assert await write(conn, job_id, token) == []
    assert await snapshot(conn, job_id) == before


@pytest.mark.parametrize("name", list(FINALIZERS))
async def test_only_the_current_lease_token_finalizes(conn: asyncpg.Connection, name: str) -> None:
    write, expect = FINALIZERS[name]
    job_id, stale, current = await stale_and_current_tokens(conn)

    # The daemon that lost the lease comes back late: nothing it sends lands.
    await assert_writes_nothing(conn, write, job_id, stale)
    # Nor does a token nobody was ever given.
    await assert_writes_nothing(conn, write, job_id, uuid.uuid4())

    now = at(LEASE + 10)
    await set_clock(conn, now)
    assert await write(conn, job_id, current) == [job_id]
    row = await snapshot(conn, job_id)
    expect(row, now, 1)
    assert (row["lease_token"], row["leased_until"], row["worker_id"]) == (None, None, None)

    # Once written, even the token that wrote it cannot write again (the lease is gone).
    await assert_writes_nothing(conn, write, job_id, current)
    await assert_writes_nothing(conn, write, job_id, stale)


@pytest.mark.parametrize("name", [*FINALIZERS, "heartbeat"])
async def test_a_row_ended_by_hand_with_its_token_left_is_never_written(
    conn: asyncpg.Connection, name: str
) -> None:
    """The batch statements match rows by lease token, not by state (docs/design.md, "Plans"). A script
    that fails a running job and clears only leased_until leaves the token in place, which the CHECK
    allows: nothing the daemon sends under that token may touch the row, and a heartbeat over a batch
    holding it still extends the others (one failed heartbeat statement would lose every lease)."""
    write = heartbeat(45.0) if name == "heartbeat" else FINALIZERS[name][0]
    job_id, _, current = await stale_and_current_tokens(conn)
    await conn.execute(
        "UPDATE notifyq.jobs SET state = 'failed', leased_until = NULL, finished_at = now() WHERE id = $1",
        job_id,
    )
    await assert_writes_nothing(conn, write, job_id, current)
    if name == "heartbeat":
        other: int = await conn.fetchval("INSERT INTO notifyq.jobs (task) VALUES ('t') RETURNING id")
        (claimed,) = await conn.fetch(
            queries.get("claim_head"), "default", ["t"], [None], 1, 30.0, WORKER, 1 << 40
        )
        assert claimed["id"] == other
        assert await extend(conn, {job_id: current, other: claimed["lease_token"]}, 45.0) == [other]


async def test_only_the_current_lease_token_heartbeats(conn: asyncpg.Connection) -> None:
    job_id, stale, current = await stale_and_current_tokens(conn)
    beat = heartbeat(45.0)

    await set_clock(conn, at(LEASE + 5))
    await assert_writes_nothing(conn, beat, job_id, stale)
    await assert_writes_nothing(conn, beat, job_id, uuid.uuid4())

    before = await snapshot(conn, job_id)
    assert await beat(conn, job_id, current) == [job_id]
    after = await snapshot(conn, job_id)
    assert after["leased_until"] == at(LEASE + 5 + 45.0)
    # Only the lease moved.
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"leased_until", "row_version"}
    assert (after["state"], after["lease_token"]) == ("running", current)


async def test_heartbeat_extends_to_now_plus_the_lease_exactly(conn: asyncpg.Connection) -> None:
    await set_clock(conn, T0)
    a = await insert_job(conn)
    b = await insert_job(conn)
    claim_a = await claim_head(conn, lease=LEASE)
    claim_b = await claim_jobs(conn, lease=LEASE)
    assert {claim_a["id"], claim_b["id"]} == {a, b}
    assert await conn.fetchval("SELECT leased_until FROM notifyq.jobs WHERE id = $1", a) == at(LEASE)

    # A heartbeat a third into the lease, with a fractional lease length: exactly now + lease for every
    # held job, in one statement, and not a microsecond less.
    now = at(LEASE / 3)
    await set_clock(conn, now)
    held = {claim_a["id"]: claim_a["lease_token"], claim_b["id"]: claim_b["lease_token"]}
    assert set(await extend(conn, held, 12.5)) == {a, b}
    leases = await conn.fetch("SELECT id, leased_until FROM notifyq.jobs ORDER BY id")
    assert [(r["id"], r["leased_until"]) for r in leases] == [
        (a, now + timedelta(seconds=12.5)),
        (b, now + timedelta(seconds=12.5)),
    ]
    # And the worker row it keeps fresh.
    worker = await conn.fetchrow("SELECT last_seen, running FROM notifyq.workers WHERE id = $1", WORKER)
    assert worker["running"] == 2

    # A later beat with the daemon's usual lease: the lease runs from the beat, never from before it.
    later = at(LEASE * 2 / 3)
    await set_clock(conn, later)
    await heartbeat(LEASE)(conn, a, claim_a["lease_token"])
    assert await conn.fetchval("SELECT leased_until FROM notifyq.jobs WHERE id = $1", a) == later + timedelta(
        seconds=LEASE
    )


# -- an operator cancels a running job by hand ----------------------------------------------------------

HAND_CANCEL = "UPDATE notifyq.jobs SET state = 'cancelled', finished_at = now() WHERE id = $1"
HAND_CANCEL_CLEARING_THE_LEASE = (
    "UPDATE notifyq.jobs SET state = 'cancelled', finished_at = now(),"
    " lease_token = NULL, leased_until = NULL, worker_id = NULL WHERE id = $1"
)


async def rescue_writer(conn: asyncpg.Connection, job_id: int, token: uuid.UUID) -> list[int]:
    """Another daemon's rescue, run once the (former) lease has expired."""
    await set_clock(conn, at(LEASE * 3))
    rows = await rescue(conn)
    return [r["id"] for r in rows]


LATE_WRITERS: dict[str, Writer] = {
    **{name: writer for name, (writer, _) in FINALIZERS.items()},
    "heartbeat": heartbeat(),
    "rescue_expired": rescue_writer,
}


@pytest.mark.parametrize("clears_lease", [False, True], ids=["lease_left", "lease_cleared"])
@pytest.mark.parametrize("name", list(LATE_WRITERS))
async def test_a_hand_cancelled_job_is_never_overwritten_by_a_late_write(
    conn: asyncpg.Connection, name: str, clears_lease: bool
) -> None:
    write = LATE_WRITERS[name]
    await set_clock(conn, T0)
    job_id = await insert_job(conn)
    token = (await claim_head(conn))["lease_token"]
    await set_clock(conn, at(5))
    running = await snapshot(conn, job_id)

    try:
        await conn.execute(HAND_CANCEL_CLEARING_THE_LEASE if clears_lease else HAND_CANCEL, job_id)
    except asyncpg.CheckViolationError as exc:
        # Refused: a cancelled row cannot keep a lease. The job is still the daemon's, untouched.
        assert not clears_lease
        assert exc.sqlstate == "23514"
        assert exc.constraint_name == "jobs_lease_only_when_running"
        assert await snapshot(conn, job_id) == running
        return

    cancelled = await snapshot(conn, job_id)
    assert cancelled["state"] == "cancelled" and cancelled["finished_at"] is not None
    # The daemon that ran it writes late with the token that was current when it was cancelled.
    assert await write(conn, job_id, token) == []
    assert await snapshot(conn, job_id) == cancelled


# -- rescue ----------------------------------------------------------------------------------------------


async def test_rescue_takes_exactly_the_expired_leases(conn: asyncpg.Connection) -> None:
    await set_clock(conn, T0)
    tasks = ["expired", "again", "spent", "live", "edge", "queued", "succeeded", "failed", "cancelled"]
    ids = {task: await insert_job(conn, task, max_attempts=1 if task == "spent" else 3) for task in tasks}
    await conn.execute("UPDATE notifyq.jobs SET run_at = $1 WHERE task = 'queued'", T0 - timedelta(days=400))
    # No worker row, so no mark: every started job's start is unclear. `again` and `spent` were forgiven
    # an unclear crash before: this one counts.
    await conn.execute("UPDATE notifyq.jobs SET unclear_crashes = 1 WHERE task IN ('again', 'spent')")

    await claim_head(conn, "expired", lease=10)  # expires at T0+10: its first crash
    await claim_head(conn, "again", lease=10)  # expires: its second crash
    spent = await claim_jobs(conn, "spent", lease=10)  # expires, its second crash, attempts spent
    assert spent["attempts"] == spent["max_attempts"] == 1
    await claim_head(conn, "live", lease=100)  # live at T0+50
    await claim_jobs(conn, "edge", lease=50)  # leased until exactly T0+50: not yet expired
    for task in ("succeeded", "failed"):
        claimed = await claim_head(conn, task, lease=10)
        state = "succeeded" if task == "succeeded" else "failed"
        await record(state, 0.0, 0, None, None)(conn, claimed["id"], claimed["lease_token"])
    await conn.execute(
        "UPDATE notifyq.jobs SET state = 'cancelled', finished_at = $1 WHERE task = 'cancelled'", T0
    )

    untouched = ["live", "edge", "queued", "succeeded", "failed", "cancelled"]
    before = {task: await snapshot(conn, ids[task]) for task in untouched}
    now = at(50)
    await set_clock(conn, now)
    rows = await rescue(conn)
    assert sorted((r["id"], r["state"], r["attempts"], r["forgiven"]) for r in rows) == sorted(
        [
            (ids["expired"], "queued", 0, True),
            (ids["again"], "queued", 1, False),
            (ids["spent"], "failed", 1, False),
        ]
    )

    forgiven = await snapshot(conn, ids["expired"])
    assert (forgiven["state"], forgiven["attempts"], forgiven["unclear_crashes"]) == ("queued", 0, 1)
    assert forgiven["run_at"] == now
    assert forgiven["finished_at"] is None
    assert (forgiven["lease_token"], forgiven["leased_until"], forgiven["worker_id"]) == (None, None, None)
    assert forgiven["last_error"] == (
        f"LeaseExpired: worker {WORKER} stopped heartbeating during attempt 1 (not counted: it may never"
        " have started; it starts alone from now on)"
    )

    requeued = await snapshot(conn, ids["again"])
    assert (requeued["state"], requeued["attempts"], requeued["unclear_crashes"]) == ("queued", 1, 2)
    assert requeued["attempts"] == 1  # the attempt the lost run used stays spent
    assert requeued["run_at"] == now
    assert requeued["finished_at"] is None
    assert requeued["last_error"] == f"LeaseExpired: worker {WORKER} stopped heartbeating during attempt 1"

    failed = await snapshot(conn, ids["spent"])
    assert (failed["state"], failed["unclear_crashes"]) == ("failed", 2)
    assert failed["attempts"] == 1
    assert failed["finished_at"] == now
    assert (failed["lease_token"], failed["leased_until"], failed["worker_id"]) == (None, None, None)
    assert failed["last_error"].startswith("LeaseExpired:")

    for task in untouched:
        assert await snapshot(conn, ids[task]) == before[task], task

    # A microsecond later the edge lease has expired too, and only it is taken.
    await set_clock(conn, now + timedelta(microseconds=1))
    rows = await rescue(conn)
    assert [(r["id"], r["state"]) for r in rows] == [(ids["edge"], "queued")]
    for task in ("live", "queued", "succeeded", "failed", "cancelled"):
        assert await snapshot(conn, ids[task]) == before[task], task


async def extend(conn: asyncpg.Connection, held: dict[int, uuid.UUID], lease: float) -> list[int]:
    """The daemon's heartbeat statement for `held` (id -> token), as one worker; the ids it extended."""
    rows = await conn.fetch(
        queries.get("extend_leases"),
        list(held),
        list(held.values()),
        lease,
        WORKER,
        "test-host",
        4242,
        ["default"],
        ["t"],
        10,
        None,
        [],
    )
    return [r["id"] for r in rows]


# -- begin: starting a buffered job ----------------------------------------------------------------------


async def test_begin_counts_the_attempt_once_and_only_under_a_current_unexpired_lease(
    conn: asyncpg.Connection,
) -> None:
    job_id, stale, current = await stale_and_current_tokens(conn)
    # stale_and_current_tokens started both claims: the current one is started already.
    assert await begin(conn, job_id, current) == []
    assert await begin(conn, job_id, stale) == []
    assert (await snapshot(conn, job_id))["attempts"] == 1

    # A reserved (claimed, not started) job whose lease ran out is not started, even by its holder:
    # a daemon frozen past its lease must not start what another may have run meanwhile.
    await set_clock(conn, T0)
    other = await insert_job(conn, "u")
    claim = await claim_head(conn, "u", lease=10, start=False)
    # Reserved, lease current: a token that is not its own (a stale one, another job's) starts nothing.
    await assert_writes_nothing(conn, begin, other, stale)
    await assert_writes_nothing(conn, begin, other, uuid.uuid4())
    await set_clock(conn, at(10))  # leased until exactly now: no longer current
    await assert_writes_nothing(conn, begin, other, claim["lease_token"])
    await set_clock(conn, at(9))
    assert await begin(conn, other, claim["lease_token"]) == [other]
    row = await snapshot(conn, other)
    assert (row["attempts"], row["started_at"]) == (1, at(9))


async def test_rescue_counts_a_start_the_mark_covers_and_forgives_one_it_does_not(
    conn: asyncpg.Connection,
) -> None:
    """A worker's entered_through mark moves with its begin statements (and never back): a job started
    at or before it ran, and its crash counts like any failed attempt; one started after it may never
    have run, and is forgiven the first time."""
    await set_clock(conn, T0)
    assert await extend(conn, {}, LEASE) == []  # the heartbeat creates the worker's row
    ran, unclear = await insert_job(conn, "a"), await insert_job(conn, "b")
    a = await claim_head(conn, "a", start=False)
    b = await claim_head(conn, "b", start=False)
    [first] = await conn.fetch(queries.get("begin_jobs"), [ran], [a["lease_token"]], WORKER, None)
    assert first["started_at"] == T0
    await set_clock(conn, at(1))
    # The second begin carries the mark: every handler of the first batch has been called.
    await conn.fetch(queries.get("begin_jobs"), [unclear], [b["lease_token"]], WORKER, T0)
    await conn.execute(queries.get("mark_entered"), WORKER, T0 - timedelta(seconds=5))  # never back
    assert await conn.fetchval("SELECT entered_through FROM notifyq.workers WHERE id = $1", WORKER) == T0

    await set_clock(conn, at(LEASE + 2))
    rows = await rescue(conn)
    assert sorted((r["id"], r["state"], r["attempts"], r["forgiven"]) for r in rows) == [
        (ran, "queued", 1, False),
        (unclear, "queued", 0, True),
    ]
    assert (await snapshot(conn, ran))["unclear_crashes"] == 0
    assert (await snapshot(conn, unclear))["unclear_crashes"] == 1


async def test_rescue_leaves_the_leases_its_own_daemon_still_holds(conn: asyncpg.Connection) -> None:
    """A daemon back from a pause rescued its own expired leases before its heartbeat could extend them,
    and threw away outcomes it had in hand. What it still holds, its heartbeat extends or fences."""
    await set_clock(conn, T0)
    mine, theirs = await insert_job(conn, "a"), await insert_job(conn, "b")
    held = await claim_head(conn, "a")
    await claim_head(conn, "b")
    await set_clock(conn, at(LEASE + 1))
    rows = await conn.fetch(queries.get("rescue_expired"), 100, [mine], [held["lease_token"]])
    assert [r["id"] for r in rows] == [theirs]
    assert (await snapshot(conn, mine))["state"] == "running"
    # Held under another token (a stale claim of ours): not ours any more, so rescued.
    rows = await conn.fetch(queries.get("rescue_expired"), 100, [mine], [uuid.uuid4()])
    assert [r["id"] for r in rows] == [mine]


async def test_rescue_puts_an_unstarted_job_back_as_it_was(conn: asyncpg.Connection) -> None:
    await set_clock(conn, T0)
    job_id = await insert_job(conn, max_attempts=1)
    await conn.execute("UPDATE notifyq.jobs SET last_error = 'earlier' WHERE id = $1", job_id)
    queued = await snapshot(conn, job_id)
    claim = await claim_head(conn, lease=10, start=False)
    assert claim["attempts"] == 1  # the attempt it will be, once started
    reserved = await snapshot(conn, job_id)
    assert (reserved["state"], reserved["attempts"], reserved["started_at"]) == ("running", 0, None)

    await set_clock(conn, at(11))
    rows = await rescue(conn)
    assert [(r["id"], r["state"], r["attempts"], r["started"]) for r in rows] == [
        (job_id, "queued", 0, False)
    ]
    back = await snapshot(conn, job_id)
    assert back["state"] == "queued"  # not failed, although max_attempts is 1
    for column in ("attempts", "run_at", "last_error", "finished_at", "lease_token", "worker_id"):
        assert back[column] == queued[column], column


async def test_giving_back_refunds_only_a_counted_attempt(conn: asyncpg.Connection) -> None:
    await set_clock(conn, T0)
    unstarted_id = await insert_job(conn, "a")
    started_id = await insert_job(conn, "b")
    unstarted = await claim_head(conn, "a", start=False)
    started = await claim_head(conn, "b")  # begun, but its answer lost: given back as unstarted
    give_back = record("queued", 0.0, 1, None, None)
    assert await give_back(conn, unstarted_id, unstarted["lease_token"]) == [unstarted_id]
    assert await give_back(conn, started_id, started["lease_token"]) == [started_id]
    assert (await snapshot(conn, unstarted_id))["attempts"] == 0
    assert (await snapshot(conn, started_id))["attempts"] == 0
