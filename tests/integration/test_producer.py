"""The producer contract: plain INSERT, notifyq.enqueue(), Python enqueue(), and bad rows refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from notifyq import NewJob, enqueue, enqueue_many

pytestmark = pytest.mark.timeout(30)


async def test_plain_insert_is_enough(conn: asyncpg.Connection) -> None:
    await conn.execute(
        """INSERT INTO notifyq.jobs (task, payload) VALUES ('emails.send', '{"to": "a@b.c"}')"""
    )
    row = await conn.fetchrow("SELECT * FROM notifyq.jobs")
    assert row["queue"] == "default"
    assert row["state"] == "queued"
    assert row["attempts"] == 0
    assert row["max_attempts"] is None  # not given: the task's max_attempts, else 20, applies at its claim
    assert row["priority"] == 0
    assert row["lease_token"] is None


@pytest.mark.parametrize(
    ("columns", "values", "field", "limit"),
    [
        ("task", "''", "task", "1 to 200 characters"),
        ("task", "repeat('x', 201)", "task", "1 to 200 characters"),
        ("task, queue", "'t', 'Bad Queue'", "queue", "^[a-z0-9][a-z0-9_.:-]{0,62}$"),
        ("task, queue", "'t', 'q;drop'", "queue", "^[a-z0-9]"),
        ("task, queue", "'t', repeat('q', 64)", "queue", "at most 63"),
        ("task, queue", "'t', 'é'", "queue", "^[a-z0-9]"),
        ("task, payload", "'t', jsonb_build_object('x', repeat('a', 1048577))", "payload", "1048576 bytes"),
        ("task, max_attempts", "'t', 0", "max_attempts", "between 1 and 1000"),
        ("task, max_attempts", "'t', -5", "max_attempts", "between 1 and 1000"),
        ("task, run_at", "'t', '0001-01-01 00:00:00+00'", "run_at", "between 0001-01-02 00:00:00+00 and"),
        ("task, run_at", "'t', '10000-01-01 00:00:00+00'", "run_at", "and 9999-12-31 00:00:00+00"),
        ("task, state", "'t', 'running'", "state", "only insert queued"),
        ("task, state", "'t', 'succeeded'", "state", "only insert queued"),
        ("task, lease_token, leased_until", "'t', gen_random_uuid(), now()", "lease_token", "lease"),
        ("task, worker_id", "'t', gen_random_uuid()", "lease_token", "lease"),
        ("task, attempts", "'t', 3", "attempts", "must be 0"),
    ],
)
async def test_bad_rows_are_refused_naming_the_field(
    conn: asyncpg.Connection, columns: str, values: str, field: str, limit: str
) -> None:
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await conn.execute(f"INSERT INTO notifyq.jobs ({columns}) VALUES ({values})")
    assert f"notifyq.jobs.{field}" in str(caught.value)
    assert limit in str(caught.value)
    assert caught.value.column_name == field
    assert await conn.fetchval("SELECT count(*) FROM notifyq.jobs") == 0


async def test_updates_cannot_break_the_lease_invariant(conn: asyncpg.Connection) -> None:
    job_id = await enqueue(conn, "t")
    with pytest.raises(asyncpg.CheckViolationError, match="jobs_lease_only_when_running"):
        await conn.execute("UPDATE notifyq.jobs SET state = 'running' WHERE id = $1", job_id)


async def test_sql_enqueue_with_named_arguments(conn: asyncpg.Connection) -> None:
    job_id = await conn.fetchval(
        """SELECT notifyq.enqueue('emails.send', '{"to": "x"}', queue => 'mail', priority => 5,
                  run_at => now() + interval '1 hour', max_attempts => 3)"""
    )
    row = await conn.fetchrow("SELECT *, run_at - now() AS delay FROM notifyq.jobs WHERE id = $1", job_id)
    assert (row["queue"], row["priority"], row["max_attempts"]) == ("mail", 5, 3)
    assert timedelta(minutes=59) < row["delay"] <= timedelta(hours=1)


async def test_sql_enqueue_refuses_bad_priority(conn: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match=r"notifyq.jobs.priority: must be between"):
        await conn.fetchval("SELECT notifyq.enqueue('t', priority => 40000)")


async def test_dedup_returns_the_existing_id_until_it_finishes(conn: asyncpg.Connection) -> None:
    first = await conn.fetchval("SELECT notifyq.enqueue('t', dedup_key => 'k1')")
    again = await conn.fetchval("SELECT notifyq.enqueue('t', '{\"other\": 1}', dedup_key => 'k1')")
    assert again == first
    assert await conn.fetchval("SELECT count(*) FROM notifyq.jobs") == 1
    # Once the holder has finished, the key is free for a new job.
    await conn.execute(
        "UPDATE notifyq.jobs SET state = 'succeeded', finished_at = now() WHERE id = $1", first
    )
    fresh = await conn.fetchval("SELECT notifyq.enqueue('t', dedup_key => 'k1')")
    assert fresh != first


async def test_python_enqueue_is_part_of_the_callers_transaction(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    other = await asyncpg.connect(db_dsn)
    try:
        tx = conn.transaction()
        await tx.start()
        job_id = await enqueue(conn, "emails.send", {"to": "a@b.c"}, priority=2)
        assert await other.fetchval("SELECT count(*) FROM notifyq.jobs") == 0
        await tx.rollback()
        assert await conn.fetchval("SELECT count(*) FROM notifyq.jobs WHERE id = $1", job_id) == 0
        async with conn.transaction():
            job_id = await enqueue(conn, "emails.send", {"to": "a@b.c"}, priority=2)
        row = await other.fetchrow("SELECT task, payload::text, priority FROM notifyq.jobs")
        assert row["task"] == "emails.send"
        assert row["payload"] == '{"to": "a@b.c"}'
        assert row["priority"] == 2
    finally:
        await other.close()


async def test_python_enqueue_run_at_forms(conn: asyncpg.Connection) -> None:
    later = await enqueue(conn, "t", run_at=timedelta(minutes=10))
    at = datetime(2030, 1, 1, tzinfo=UTC)
    fixed = await enqueue(conn, "t", run_at=at)
    rows = {r["id"]: r for r in await conn.fetch("SELECT id, run_at, run_at - now() AS d FROM notifyq.jobs")}
    assert timedelta(minutes=9) < rows[later]["d"] <= timedelta(minutes=10)
    assert rows[fixed]["run_at"] == at
    with pytest.raises(ValueError, match="timezone-aware"):
        await enqueue(conn, "t", run_at=datetime(2030, 1, 1))


async def test_python_enqueue_surfaces_the_constraint_error(conn: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match=r"notifyq\.jobs\.queue"):
        await enqueue(conn, "t", queue="NOPE")


async def test_enqueue_many_returns_ids_in_input_order(conn: asyncpg.Connection) -> None:
    jobs = [NewJob("t", {"i": i}, priority=i % 3) for i in range(500)]
    jobs[7] = NewJob("later", run_at=timedelta(minutes=5), queue="slow")
    ids = await enqueue_many(conn, jobs)
    assert len(ids) == 500 and len(set(ids)) == 500
    rows = {
        r["id"]: r
        for r in await conn.fetch(
            "SELECT id, task, payload, priority, queue, run_at > now() AS later FROM notifyq.jobs"
        )
    }
    for pos, job_id in enumerate(ids):
        if pos == 7:
            assert (rows[job_id]["task"], rows[job_id]["queue"], rows[job_id]["later"]) == (
                "later",
                "slow",
                True,
            )
        else:
            assert rows[job_id]["payload"] == f'{{"i": {pos}}}'
            assert rows[job_id]["priority"] == pos % 3
    assert await enqueue_many(conn, []) == []


async def test_enqueue_many_dedup_gives_the_holder_id(conn: asyncpg.Connection) -> None:
    held = await enqueue(conn, "t", dedup_key="a")
    ids = await enqueue_many(
        conn,
        [
            NewJob("t"),
            NewJob("t", dedup_key="a"),
            NewJob("t", dedup_key="b"),
            NewJob("t"),
            NewJob("t", dedup_key="b"),
        ],
    )
    assert ids[1] == held
    assert ids[2] == ids[4] != held
    assert len({ids[0], ids[2], ids[3], held}) == 4
    assert await conn.fetchval("SELECT count(*) FROM notifyq.jobs") == 4


async def test_enqueue_many_refuses_the_whole_batch_naming_the_field(conn: asyncpg.Connection) -> None:
    with pytest.raises(
        asyncpg.CheckViolationError, match=r"notifyq\.jobs\.priority: must be between -1000 and 1000"
    ):
        await enqueue_many(conn, [NewJob("ok"), NewJob("t", priority=5000)])
    with pytest.raises(ValueError, match=r"jobs\[1\]\.run_at: must be timezone-aware"):
        await enqueue_many(conn, [NewJob("ok"), NewJob("t", run_at=datetime(2030, 1, 1))])
    with pytest.raises(ValueError, match=r"jobs\[0\]\.payload: not JSON-serializable"):
        await enqueue_many(conn, [NewJob("t", {"x": object()})])
    with pytest.raises(asyncpg.InvalidParameterValueError, match="as many elements as tasks"):
        await conn.fetch("SELECT * FROM notifyq.enqueue_many(ARRAY['a', 'b'], priorities => ARRAY[1])")
    with pytest.raises(asyncpg.InvalidParameterValueError, match="element 1 gives run_ats and run_ins"):
        await conn.fetch(
            "SELECT * FROM notifyq.enqueue_many(ARRAY['a'], run_ats => ARRAY[now()], run_ins => ARRAY['1 min'::interval])"
        )
    assert await conn.fetchval("SELECT count(*) FROM notifyq.jobs") == 0


async def test_enqueue_many_from_plain_sql_uses_the_defaults(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch("SELECT pos, id FROM notifyq.enqueue_many(ARRAY['a', 'b'])")
    assert [r["pos"] for r in rows] == [1, 2]
    job = await conn.fetchrow("SELECT * FROM notifyq.jobs WHERE id = $1", rows[1]["id"])
    assert (job["task"], job["queue"], job["priority"], job["max_attempts"]) == ("b", "default", 0, None)
