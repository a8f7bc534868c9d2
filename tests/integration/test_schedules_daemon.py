"""Periodic jobs with real daemons: code schedules, a schedule added by plain SQL taking effect within a
second, changes at runtime, prune after a schedule leaves the code, and a task no daemon handles."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
import pytest

from notifyq import Job, Registry
from tests.support import cli, running_daemon, wait_for

pytestmark = pytest.mark.timeout(60)


def app(*schedules: str) -> Registry:
    """Handles `sched.tick` (and records nothing: the jobs table is the record); declares each named
    every-second schedule in code."""
    registry = Registry()

    @registry.task("sched.tick")
    async def tick(job: Job) -> None:
        return None

    for name in schedules:
        registry.periodic("* * * * * *", name=name, task="sched.tick")
    return registry


async def made(conn: asyncpg.Connection, name: str) -> list[datetime]:
    rows = await conn.fetch(
        "SELECT schedule_tick FROM notifyq.jobs WHERE schedule = $1 ORDER BY schedule_tick", name
    )
    return [r[0] for r in rows]


def consecutive(ticks: list[datetime]) -> bool:
    return all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(ticks))


async def test_a_code_schedule_runs_each_second_and_is_declared(conn: asyncpg.Connection, db_dsn: str) -> None:
    async with running_daemon(db_dsn, app("code-every-second")):
        await wait_for(
            lambda: conn.fetchval(
                "SELECT count(*) >= 3 FROM notifyq.jobs WHERE schedule = 'code-every-second' AND state = 'succeeded'"
            ),
            10,
            "three ticks run",
        )
        row = await conn.fetchrow("SELECT source, enabled, next_tick FROM notifyq.schedules")
        assert row["source"] == "code" and row["enabled"] and row["next_tick"] is not None
        assert await conn.fetchval("SELECT schedules FROM notifyq.workers") == ["code-every-second"]
    ticks = await made(conn, "code-every-second")
    assert consecutive(ticks) and len(ticks) == len(set(ticks))


async def test_a_schedule_added_by_plain_sql_takes_effect_within_a_second(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    async with running_daemon(db_dsn, app()):
        sql = "INSERT INTO notifyq.schedules (name, cron, task) VALUES ('from-psql', '* * * * * *', 'sched.tick')"
        await anyio.run_process(["psql", db_dsn, "-v", "ON_ERROR_STOP=1", "-qc", sql])
        inserted = await conn.fetchval("SELECT created_at FROM notifyq.schedules WHERE name = 'from-psql'")
        await wait_for(lambda: made(conn, "from-psql"), 5, "the first tick's job")
        first = await conn.fetchval("SELECT min(created_at) FROM notifyq.jobs WHERE schedule = 'from-psql'")
        # The first tick falls within a second of the insert, and its job is made at once: the daemon
        # heard the NOTIFY (without it, an idle scheduler looks again only every minute).
        assert first - inserted < timedelta(seconds=1.5)


async def test_changed_disabled_and_re_enabled_at_runtime(conn: asyncpg.Connection, db_dsn: str) -> None:
    async with running_daemon(db_dsn, app()):
        await conn.execute("SELECT notifyq.schedule('live', '* * * * * *', 'sched.tick')")
        await wait_for(lambda: conn.fetchval("SELECT count(*) >= 2 FROM notifyq.jobs"), 5, "two ticks")
        await conn.execute("UPDATE notifyq.schedules SET cron = '*/2 * * * * *'")
        changed_at = await conn.fetchval("SELECT since FROM notifyq.schedules")
        await wait_for(
            lambda: conn.fetchval("SELECT count(*) >= 2 FROM notifyq.jobs WHERE schedule_tick > $1", changed_at),
            6,
            "two ticks of the new rule",
        )
        after = [t for t in await made(conn, "live") if t > changed_at]
        assert all(t.second % 2 == 0 for t in after)
        await conn.execute("UPDATE notifyq.schedules SET enabled = false")
        disabled_at = await conn.fetchval("SELECT now()")
        before = len(await made(conn, "live"))
        await anyio.sleep(2.5)  # no event marks "no tick came": a bounded look, two ticks of the rule long
        assert len(await made(conn, "live")) <= before + 1  # at most a tick already in flight
        await conn.execute("UPDATE notifyq.schedules SET enabled = true")
        enabled_at = await conn.fetchval("SELECT since FROM notifyq.schedules")
        await wait_for(
            lambda: conn.fetchval("SELECT count(*) >= 1 FROM notifyq.jobs WHERE schedule_tick > $1", enabled_at),
            5,
            "a tick after re-enabling",
        )
        gap = [t for t in await made(conn, "live") if disabled_at + timedelta(seconds=1) < t <= enabled_at]
        assert gap == []  # nothing backfilled for the disabled time


async def test_a_schedule_removed_from_the_code_stays_until_pruned(conn: asyncpg.Connection, db_dsn: str) -> None:
    async with running_daemon(db_dsn, app("old", "kept")):
        await wait_for(lambda: made(conn, "old"), 5, "a tick of the old schedule")
    async with running_daemon(db_dsn, app("kept")):  # the next deploy no longer declares `old`
        assert {r[0] for r in await conn.fetch("SELECT name FROM notifyq.schedules")} == {"old", "kept"}
        pruned = cli("schedules", "prune", "--dsn", db_dsn)
        assert pruned.returncode == 0, pruned.stderr
        assert "removed 'old'" in pruned.stdout
        assert {r[0] for r in await conn.fetch("SELECT name FROM notifyq.schedules")} == {"kept"}


async def test_a_schedule_for_a_task_no_daemon_handles_is_reported(conn: asyncpg.Connection, db_dsn: str) -> None:
    async with running_daemon(db_dsn, app()):
        await conn.execute("SELECT notifyq.schedule('orphan', '* * * * * *', 'nobody.handles')")
        await wait_for(lambda: made(conn, "orphan"), 5, "a tick's job")
        checked = cli("check", "--dsn", db_dsn)
        assert "WARN  handlers:" in checked.stdout and "'nobody.handles'" in checked.stdout
        assert await conn.fetchval("SELECT state::text FROM notifyq.jobs WHERE schedule = 'orphan' LIMIT 1") == "queued"


async def test_after_every_daemon_was_down_ten_minutes(conn: asyncpg.Connection, db_dsn: str) -> None:
    """Daemons started on a database clock pinned (for new sessions) ten minutes after the last tick."""
    t0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    database = db_dsn.rsplit("/", 1)[1]

    async def pin_database(when: datetime) -> None:
        await conn.execute(f"ALTER DATABASE {database} SET notifyq.now = '{when.isoformat()}'")

    await conn.execute(f"SET notifyq.now = '{t0.isoformat()}'")
    await conn.execute(
        "INSERT INTO notifyq.schedules (name, cron, task, backfill) VALUES"
        " ('plain', '* * * * *', 'sched.tick', '0'), ('filled', '* * * * *', 'sched.tick', '1 hour')"
    )
    await pin_database(t0 + timedelta(minutes=1, seconds=30))
    async with running_daemon(db_dsn, app()):
        await wait_for(lambda: conn.fetchval("SELECT count(*) = 2 FROM notifyq.jobs"), 10, "the first ticks")
    await pin_database(t0 + timedelta(minutes=11, seconds=30))  # every daemon stopped for ten minutes
    async with running_daemon(db_dsn, app()):
        await wait_for(lambda: conn.fetchval("SELECT count(*) = 13 FROM notifyq.jobs"), 10, "the catch-up")
    minute = timedelta(minutes=1)
    assert await made(conn, "plain") == [t0 + minute, t0 + 11 * minute]
    assert await made(conn, "filled") == [t0 + i * minute for i in range(1, 12)]
    backfilled = await conn.fetch(
        "SELECT schedule_tick FROM notifyq.jobs WHERE backfilled ORDER BY schedule_tick"
    )
    assert [r[0] for r in backfilled] == [t0 + i * minute for i in range(2, 11)]
