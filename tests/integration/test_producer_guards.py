"""The producer's columns stay within their limits whoever writes them (issue 12, classes 4, 9 and 13).

- run_at is refused at INSERT beyond what every driver can decode (class 4);
- a max_attempts the producer gave wins over the task's, and NULL means the default in enqueue() and
  enqueue_many() for every optional argument (class 9);
- UPDATE gets the checks INSERT gets, with the same messages, without calling the guard on the daemon's
  own updates; an explicit id is refused (class 13);
- migration 0004 keeps the jobs already queued as the old rules would have run them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import orjson
import pytest

from notifyq import Backoff, Job, NewJob, Registry, enqueue, enqueue_many, migrate, queries, status
from notifyq.config import load_settings
from notifyq.store import Store
from tests.support import running_daemon, wait_for

pytestmark = pytest.mark.timeout(60)

# The bounds of migration 0004: years 1 to 9999 with a day's margin at each end.
FIRST = datetime(1, 1, 2, tzinfo=UTC)
LAST = datetime(9999, 12, 31, tzinfo=UTC)
WORKER = uuid.UUID(int=7)


def _refused(caught: pytest.ExceptionInfo[asyncpg.CheckViolationError], field: str) -> None:
    """The guard's own refusal: it names the column, in the message and in the error's column field."""
    assert caught.value.column_name == field, (caught.value.column_name, str(caught.value))
    assert f"notifyq.jobs.{field}:" in str(caught.value)


# -- class 4: run_at within what every driver decodes ---------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        # Before year 1 in UTC: asyncpg (Python's datetime) cannot decode it, so the claim that returned
        # it failed and the daemon crashed.
        "INSERT INTO notifyq.jobs (task, run_at) VALUES ('t', '0001-01-01 00:00:00+00')",
        "INSERT INTO notifyq.jobs (task, run_at) VALUES ('t', '0001-01-02 00:00:00+00'::timestamptz - interval '1 microsecond')",
        "INSERT INTO notifyq.jobs (task, run_at) VALUES ('t', '4713-01-01 00:00:00+00 BC')",
        # Far in the future (`notifyq enqueue --run-at +1e12`): `notifyq jobs list` could not read it back.
        "INSERT INTO notifyq.jobs (task, run_at) VALUES ('t', now() + make_interval(secs => 1e12))",
        "INSERT INTO notifyq.jobs (task, run_at) VALUES ('t', '9999-12-31 00:00:00.000001+00')",
        "SELECT notifyq.enqueue('t', run_in => make_interval(secs => 1e12))",
        "SELECT notifyq.enqueue('t', run_at => '0001-01-01 12:00:00+00')",
        "SELECT * FROM notifyq.enqueue_many(ARRAY['a', 'b'], run_ats => ARRAY[now(), '20000-01-01'::timestamptz])",
    ],
)
async def test_run_at_beyond_what_drivers_decode_is_refused_naming_the_column(
    conn: asyncpg.Connection, sql: str
) -> None:
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await conn.execute(sql)
    _refused(caught, "run_at")
    assert "between 0001-01-02 00:00:00+00 and 9999-12-31 00:00:00+00" in str(caught.value)
    assert await conn.fetchval("SELECT count(*) FROM notifyq.jobs") == 0


async def test_run_at_at_the_bounds_is_accepted_and_reads_back(conn: asyncpg.Connection, db_dsn: str) -> None:
    first = await enqueue(conn, "t", run_at=FIRST)
    last = await enqueue(conn, "t", run_at=LAST)
    rows = {r["id"]: r["run_at"] for r in await conn.fetch("SELECT id, run_at FROM notifyq.jobs")}
    assert rows == {first: FIRST, last: LAST}
    # `notifyq jobs list` reads them back through the same driver.
    store = await Store.open(db_dsn, max_size=1)
    try:
        listed = {r.id: r.run_at for r in await store.list_jobs(None, None, None, 10)}
    finally:
        await store.close()
    assert listed == {first: FIRST, last: LAST}


# -- class 9: the producer's max_attempts wins; NULL means the default ----------------------------------


async def test_null_means_the_default_for_every_optional_enqueue_argument(conn: asyncpg.Connection) -> None:
    explicit = await conn.fetchval(
        "SELECT notifyq.enqueue('t', payload => NULL, queue => NULL, run_at => NULL, priority => NULL,"
        " dedup_key => NULL, max_attempts => NULL, run_in => NULL)"
    )
    omitted = await conn.fetchval("SELECT notifyq.enqueue('t')")
    many = [
        r["id"]
        for r in await conn.fetch(
            "SELECT id FROM notifyq.enqueue_many(ARRAY['t', 't'], payloads => ARRAY[NULL, NULL]::jsonb[],"
            " queues => ARRAY[NULL, NULL]::text[], run_ats => ARRAY[NULL, NULL]::timestamptz[],"
            " priorities => ARRAY[NULL, NULL]::int[], dedup_keys => ARRAY[NULL, NULL]::text[],"
            " max_attempts => ARRAY[NULL, NULL]::int[], run_ins => ARRAY[NULL, NULL]::interval[])"
        )
    ]
    rows = await conn.fetch(
        "SELECT id, queue, payload::text, priority, dedup_key, max_attempts, run_at <= now() AS due"
        " FROM notifyq.jobs ORDER BY id"
    )
    assert [r["id"] for r in rows] == [explicit, omitted, *many]
    for r in rows:
        assert tuple(r)[1:] == ("default", "{}", 0, None, None, True), r["id"]


async def test_max_attempts_not_given_is_null_until_the_first_claim(conn: asyncpg.Connection) -> None:
    plain = await conn.fetchval("INSERT INTO notifyq.jobs (task) VALUES ('t') RETURNING id")
    sql = await conn.fetchval("SELECT notifyq.enqueue('t')")
    python = await enqueue(conn, "t")
    [many, given] = await enqueue_many(conn, [NewJob("t"), NewJob("t", max_attempts=4)])
    rows = dict(await conn.fetch("SELECT id, max_attempts FROM notifyq.jobs"))
    assert rows == {plain: None, sql: None, python: None, many: None, given: 4}


async def test_the_claim_writes_the_producers_value_else_the_tasks_else_the_default(
    conn: asyncpg.Connection,
) -> None:
    given = await enqueue(conn, "capped", max_attempts=1, priority=3)
    capped = await enqueue(conn, "capped", priority=2)
    plain = await enqueue(conn, "plain", priority=1)
    claimed = await conn.fetch(
        queries.get("claim_head"), "default", ["capped", "plain"], [3, None], 10, 30.0, WORKER, 1 << 40
    )
    expected = {given: 1, capped: 3, plain: 20}
    assert {r["id"]: r["max_attempts"] for r in claimed} == expected
    assert dict(await conn.fetch("SELECT id, max_attempts FROM notifyq.jobs")) == expected


async def test_the_producers_max_attempts_wins_over_the_tasks_in_a_daemon(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    registry = Registry(backoff=Backoff(base_seconds=0.05, factor=1.0, cap_seconds=0.05, jitter=0.0))
    runs: dict[int, int] = {}

    @registry.task("boom", max_attempts=3)
    async def boom(job: Job) -> None:
        runs[job.id] = runs.get(job.id, 0) + 1
        raise ValueError(f"attempt {job.attempt} of {job.max_attempts}")

    once = await enqueue(conn, "boom", max_attempts=1)  # the producer's 1 must win over the task's 3
    often = await enqueue(conn, "boom", max_attempts=5)  # and so must a value above the task's
    task_default = await enqueue(conn, "boom")  # no value: the task's 3

    async def all_failed() -> bool:
        return bool(
            await conn.fetchval(
                "SELECT count(*) = 3 FROM notifyq.jobs WHERE state = 'failed' AND id = ANY($1)",
                [once, often, task_default],
            )
        )

    async with running_daemon(db_dsn, registry):
        await wait_for(all_failed, 30, "every job to end failed")
    rows = {r["id"]: r for r in await conn.fetch("SELECT id, attempts, max_attempts FROM notifyq.jobs")}
    assert runs == {once: 1, often: 5, task_default: 3}
    assert {i: (r["attempts"], r["max_attempts"]) for i, r in rows.items()} == {
        once: (1, 1),
        often: (5, 5),
        task_default: (3, 3),
    }


async def test_jobs_list_and_show_read_a_max_attempts_not_given(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    job_id = await enqueue(conn, "t")
    settings = load_settings(dsn=db_dsn)
    listed = await status.job_rows(settings, None, None, None, 10, False)
    assert f"{job_id} " in listed and " 0/- " in listed, listed
    shown = await status.job_detail(settings, job_id)
    assert shown is not None and orjson.loads(shown)["max_attempts"] is None


# -- class 13: UPDATE is checked like INSERT ----------------------------------------------------------


@pytest.mark.parametrize(
    ("assignment", "field"),
    [
        ("payload = jsonb_build_object('x', repeat('a', 3000000))", "payload"),
        ("payload = NULL", "payload"),
        ("run_at = '0001-01-01 00:00:00+00'", "run_at"),
        ("run_at = now() + make_interval(secs => 1e12)", "run_at"),
        ("run_at = 'infinity'", "run_at"),
        ("max_attempts = 0", "max_attempts"),
        ("max_attempts = 5000", "max_attempts"),
        ("priority = 40000", "priority"),
        ("queue = 'Bad Queue'", "queue"),
        ("task = ''", "task"),
        ("task = repeat('x', 201)", "task"),
        ("dedup_key = ''", "dedup_key"),
    ],
)
async def test_updates_of_producer_columns_are_refused_like_inserts(
    conn: asyncpg.Connection, assignment: str, field: str
) -> None:
    job_id = await enqueue(conn, "t")
    before = await conn.fetchrow("SELECT * FROM notifyq.jobs WHERE id = $1", job_id)
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await conn.execute(f"UPDATE notifyq.jobs SET {assignment} WHERE id = $1", job_id)
    _refused(caught, field)
    assert await conn.fetchrow("SELECT * FROM notifyq.jobs WHERE id = $1", job_id) == before


async def test_an_infinite_lease_is_refused(conn: asyncpg.Connection) -> None:
    job_id = await enqueue(conn, "t")
    [claimed] = await conn.fetch(
        queries.get("claim_head"), "default", ["t"], [None], 1, 30.0, WORKER, 1 << 40
    )
    assert claimed["id"] == job_id
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await conn.execute("UPDATE notifyq.jobs SET leased_until = 'infinity' WHERE id = $1", job_id)
    _refused(caught, "leased_until")


@pytest.mark.parametrize(
    ("assignment", "constraint"),
    [
        ("attempts = 4", "jobs_attempts_within_max"),
        ("max_attempts = 1, attempts = 2", "jobs_attempts_within_max"),
        ("created_at = 'infinity'", "jobs_times_finite"),
        ("finished_at = '-infinity'", "jobs_times_finite"),
        ("started_at = 'infinity'", "jobs_times_finite"),
    ],
)
async def test_updates_no_job_could_live_with_are_refused(
    conn: asyncpg.Connection, assignment: str, constraint: str
) -> None:
    """Migration 0005's backstops: attempts beyond max_attempts (a queued job with none left) and
    infinite times, written by UPDATE with the table's rights (the producer role has none)."""
    job_id = await enqueue(conn, "t", max_attempts=3)
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await conn.execute(f"UPDATE notifyq.jobs SET {assignment} WHERE id = $1", job_id)
    assert caught.value.constraint_name == constraint


async def test_valid_updates_of_producer_columns_still_work(conn: asyncpg.Connection) -> None:
    job_id = await enqueue(conn, "t", max_attempts=3)
    await conn.execute(
        "UPDATE notifyq.jobs SET priority = 7, queue = 'mail', payload = '{\"a\": 1}', run_at = $2,"
        " max_attempts = NULL, dedup_key = 'k', task = 'u' WHERE id = $1",
        job_id,
        LAST,
    )
    row = await conn.fetchrow("SELECT * FROM notifyq.jobs WHERE id = $1", job_id)
    assert (row["priority"], row["queue"], row["task"], row["dedup_key"]) == (7, "mail", "u", "k")
    assert (row["run_at"], row["max_attempts"]) == (LAST, None)


async def test_the_daemons_updates_never_call_the_guard(conn: asyncpg.Connection) -> None:
    """The guard's WHEN clause keeps plpgsql off the daemon's hot path: claim, heartbeat, outcomes, rescue
    and an operator's retry run without a single call of notifyq.jobs_guard()."""
    await conn.execute("SET track_functions = 'pl'")
    guard = await conn.fetchval("SELECT 'notifyq.jobs_guard'::regproc::oid")
    async with conn.transaction():  # the function counters of this transaction, read before it ends
        await enqueue_many(conn, [NewJob("t") for _ in range(5)])
        inserts = await conn.fetchval("SELECT pg_stat_get_xact_function_calls($1)", guard)
        assert inserts == 5, "the counter works: one call per insert"
        claimed = await conn.fetch(queries.get("claim_head"), "default", ["t"], [2], 5, 30.0, WORKER, 1 << 40)
        ids = sorted(r["id"] for r in claimed)
        tokens = [next(r["lease_token"] for r in claimed if r["id"] == i) for i in ids]
        await conn.fetch(
            queries.get("extend_leases"), ids, tokens, 30.0, WORKER, "host", 1, ["default"], ["t"], 5, None, []
        )
        await conn.fetch(queries.get("begin_jobs"), ids, tokens, WORKER, None)
        await conn.fetch(queries.get("complete_succeeded"), ids[:1], tokens[:1])
        # A retry (run_at moves), a failure and a snooze in one batch.
        await conn.fetch(
            queries.get("record_outcomes"),
            ids[1:4],
            tokens[1:4],
            ["queued", "failed", "queued"],
            [5.0, 0.0, 1.0],
            [0, 0, 1],
            ["boom", "boom", None],
            [None, None, None],
            [0, 0, 1],
        )
        # Rescue: the last lease runs out (the clock is pinned past it).
        await conn.execute("SET LOCAL notifyq.now = '9999-01-01 00:00:00+00'")
        rescued = await conn.fetch(queries.get("rescue_expired"), 10, [], [])
        assert [r["id"] for r in rescued] == ids[4:]
        await conn.fetchval(queries.get("retry_job"), ids[2])
        calls = await conn.fetchval("SELECT pg_stat_get_xact_function_calls($1)", guard)
    assert calls == inserts, f"the daemon's updates called the guard {calls - inserts} times"


async def test_explicit_ids_are_refused(conn: asyncpg.Connection) -> None:
    first = await enqueue(conn, "t")
    # OVERRIDING SYSTEM VALUE, and COPY, which always writes the id it is given: an id the sequence has not
    # handed out yet would make a later producer's insert fail on the primary key.
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await conn.execute(
            "INSERT INTO notifyq.jobs (id, task) OVERRIDING SYSTEM VALUE VALUES ($1, 't')", first + 1
        )
    _refused(caught, "id")
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await conn.copy_records_to_table(
            "jobs", schema_name="notifyq", columns=["id", "task"], records=[(first + 2, "t")]
        )
    _refused(caught, "id")
    # Later producers are unharmed.
    assert [await enqueue(conn, "t") for _ in range(3)] == [first + 1, first + 2, first + 3]


# -- migration 0004 on a table that already holds jobs -------------------------------------------------


async def test_migration_0004_keeps_existing_jobs_as_the_old_rules_ran_them(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        # The schema as 0003 left it, recorded in the ledger as `notifyq migrate` would have.
        await conn.execute(queries.get("ledger_bootstrap"))
        for m in migrate.available()[:3]:
            await conn.execute(m.sql)
            await conn.execute(queries.get("ledger_record"), m.version, m.name, m.checksum)
        defaulted = await conn.fetchval("INSERT INTO notifyq.jobs (task) VALUES ('t') RETURNING id")
        given = await conn.fetchval(
            "INSERT INTO notifyq.jobs (task, max_attempts) VALUES ('t', 5) RETURNING id"
        )
        ancient = await conn.fetchval(
            "INSERT INTO notifyq.jobs (task, run_at) VALUES ('t', '0100-01-01 00:00:00+00 BC') RETURNING id"
        )
        distant = await conn.fetchval(
            "INSERT INTO notifyq.jobs (task, run_at) VALUES ('t', '33658-09-27 01:46:40+00') RETURNING id"
        )
        stuck = await conn.fetchval("INSERT INTO notifyq.jobs (task) VALUES ('t') RETURNING id")
        await conn.execute(
            "UPDATE notifyq.jobs SET state = 'running', lease_token = gen_random_uuid(),"
            " leased_until = 'infinity', attempts = 1 WHERE id = $1",
            stuck,
        )
        done = await conn.fetchval("INSERT INTO notifyq.jobs (task) VALUES ('t') RETURNING id")
        await conn.execute("UPDATE notifyq.jobs SET state = 'succeeded' WHERE id = $1", done)

        applied = await migrate.apply(conn)
        assert [m.label for m in applied] == [
            "0004_producer_guards",
            "0005_unclear_crashes",
            "0006_queue_counts",
            "0007_schedules",
            "0008_callbacks",
            "0009_snoozes",
        ]
        rows = {
            r["id"]: r
            for r in await conn.fetch(
                "SELECT id, max_attempts, run_at, leased_until, leased_until <= now() AS expired"
                " FROM notifyq.jobs"
            )
        }
    finally:
        await conn.close()
    # A queued job holding the old default is "not given" now: the task's override applies at its claim,
    # as it did before. Every other value stays.
    assert {i: r["max_attempts"] for i, r in rows.items()} == {
        defaulted: None,
        given: 5,
        ancient: None,
        distant: None,
        stuck: 20,
        done: 20,
    }
    assert rows[ancient]["run_at"] == FIRST
    assert rows[distant]["run_at"] == LAST
    assert rows[stuck]["expired"], "an infinite lease ends, so rescue takes the job back"
