"""Periodic jobs against a real Postgres, the clock pinned through `notifyq.now`: the SQL contract and its
refusals, one job per tick between racing schedulers, missed ticks and backfill, DST by moving the
database clock, skip_overlap, broken rules, and `notifyq schedules` (daemons: test_schedules_daemon.py)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
import pytest

from notifyq.metrics import Metrics
from notifyq.models import PeriodicSpec
from notifyq.registry import Registry
from notifyq.store import Store
from notifyq.worker import scheduler as scheduler_module
from notifyq.worker.scheduler import LOCKED_RETRY, Scheduler
from tests.support import cli

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)


async def pin(conn: asyncpg.Connection, when: datetime) -> None:
    await conn.execute(f"SET notifyq.now = '{when.isoformat()}'")


class Clocked:
    """A scheduler whose one pooled session runs on a pinned `notifyq.now`."""

    def __init__(self, store: Store, declared: list[PeriodicSpec] | None = None) -> None:
        self.store = store
        self.metrics = Metrics(["default"], [], "test")
        self.scheduler = Scheduler(store, self.metrics, declared or [])

    async def at(self, when: datetime) -> float:
        async with self.store.connection() as conn:
            await pin(conn, when)
        return await self.scheduler.pass_once()

    def ticks(self, name: str, result: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "notifyq_schedule_ticks_total", {"schedule": name, "result": result}
        )
        return value or 0.0


@pytest.fixture
async def clocked(db_dsn: str) -> AsyncIterator[Clocked]:
    store = await Store.open(db_dsn, max_size=1)
    try:
        yield Clocked(store)
    finally:
        await store.close()


async def make(conn: asyncpg.Connection, when: datetime, name: str, cron: str, **columns: object) -> None:
    """A schedule created at `when` (its `since`), by plain INSERT."""
    values: dict[str, object] = {"name": name, "cron": cron, "task": "t", **columns}
    marks = ", ".join(f"${i + 1}" for i in range(len(values)))
    await pin(conn, when)
    await conn.execute(f"INSERT INTO notifyq.schedules ({', '.join(values)}) VALUES ({marks})", *values.values())
    await conn.execute("RESET notifyq.now")


async def ticks(conn: asyncpg.Connection, name: str) -> list[tuple[datetime, bool]]:
    rows = await conn.fetch(
        "SELECT schedule_tick, backfilled FROM notifyq.jobs WHERE schedule = $1 ORDER BY schedule_tick", name
    )
    return [(r[0], r[1]) for r in rows]


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


# -- the SQL contract -----------------------------------------------------------------------------------


async def test_schedule_function_creates_and_replaces_by_name(conn: asyncpg.Connection) -> None:
    row = await conn.fetchrow(
        "SELECT * FROM notifyq.schedule('nightly', '0 3 * * *', 'reports.build',"
        " payload => '{\"kind\": \"daily\"}', timezone => 'Europe/Berlin', backfill => '2 days')"
    )
    assert row["source"] == "sql" and row["timezone"] == "Europe/Berlin" and row["enabled"]
    assert row["backfill"] == timedelta(days=2) and json.loads(row["payload"]) == {"kind": "daily"}
    again = await conn.fetchrow("SELECT * FROM notifyq.schedule('nightly', '0 4 * * *', 'reports.build')")
    assert again["cron"] == "0 4 * * *" and again["timezone"] == "UTC"
    assert await conn.fetchval("SELECT count(*) FROM notifyq.schedules") == 1


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("timezone", "Mars/Olympus", "notifyq.schedules.timezone: must be an IANA time zone"),
        ("timezone", "PST", "notifyq.schedules.timezone"),  # an abbreviation, not a zone
        ("timezone", "UTC+5", "notifyq.schedules.timezone"),  # a POSIX rule
        ("timezone", "europe/berlin", "notifyq.schedules.timezone"),  # names are spelled exactly
        ("cron", "* * * *", "notifyq.schedules.cron: must be 5 fields"),
        ("cron", "* * * * * * *", "notifyq.schedules.cron: must be 5 fields"),
        ("cron", "   ", "notifyq.schedules.cron"),
        ("queue", "Bad Queue", "notifyq.schedules.queue: must match"),
        ("priority", 5000, "notifyq.schedules.priority: must be between -1000 and 1000"),
        ("max_attempts", 0, "notifyq.schedules.max_attempts: must be between 1 and 1000"),
        ("backfill", timedelta(days=-1), "notifyq.schedules.backfill: must be an interval from 0 to 366 days"),
        ("backfill", timedelta(days=400), "notifyq.schedules.backfill"),
        ("backfill", timedelta(days=365_000_000), "notifyq.schedules.backfill: must be an interval"),
        ("cron", "*\u00a0* * * * *", "notifyq.schedules.cron: must be 5 fields"),
        ("cron", "0 * * * *\n*", "notifyq.schedules.cron: must be 5 fields"),
        ("name", "bad\nname", "notifyq.schedules.name: must be 1 to 200 characters"),
        ("task", "", "notifyq.schedules.task: must be 1 to 200 characters"),
    ],
)
async def test_bad_input_is_refused_at_insert_with_the_field_named(
    conn: asyncpg.Connection, column: str, value: object, message: str
) -> None:
    base: dict[str, object] = {"name": "s", "cron": "* * * * *", "task": "t"}
    base[column] = value
    cols = list(base)
    with pytest.raises(asyncpg.CheckViolationError, match=message.replace("(", r"\(")):
        await conn.execute(
            f"INSERT INTO notifyq.schedules ({', '.join(cols)}) VALUES"
            f" ({', '.join(f'${i + 1}' for i in range(len(cols)))})",
            *base.values(),
        )
    assert await conn.fetchval("SELECT count(*) FROM notifyq.schedules") == 0


async def test_a_new_schedule_never_backfills_whatever_its_writer_says(
    conn: asyncpg.Connection, clocked: Clocked
) -> None:
    await pin(conn, at(0))
    await conn.execute(
        "INSERT INTO notifyq.schedules (name, cron, task, backfill, since, last_tick)"
        " VALUES ('s', '* * * * *', 't', '1 day', $1, $1)",
        T0 - timedelta(days=1),
    )
    assert await conn.fetchval("SELECT since FROM notifyq.schedules") == T0
    await clocked.at(at(2.5))
    assert await ticks(conn, "s") == [(at(1), True), (at(2), False)]


# -- one job per tick --------------------------------------------------------------------------------


async def test_racing_schedulers_make_one_job_per_tick(conn: asyncpg.Connection, db_dsn: str) -> None:
    await make(conn, at(0), "race", "* * * * * *", backfill=timedelta(minutes=5))
    stores = [await Store.open(db_dsn, max_size=1) for _ in range(6)]
    try:
        racers = [Clocked(s) for s in stores]
        for step in range(1, 31):
            async with anyio.create_task_group() as tg:
                for racer in racers:
                    tg.start_soon(racer.at, at(step / 60))
        made = await ticks(conn, "race")
        assert [t for t, _ in made] == [at(s / 60) for s in range(1, 31)]
        assert sum(r.ticks("race", "enqueued") for r in racers) == 30
    finally:
        for s in stores:
            await s.close()


async def test_the_unique_key_is_the_second_guard(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO notifyq.jobs (task, schedule, schedule_tick) VALUES ('t', 's', $1)", T0
    )
    with pytest.raises(asyncpg.UniqueViolationError, match="jobs_tick_key"):
        await conn.execute(
            "INSERT INTO notifyq.jobs (task, schedule, schedule_tick) VALUES ('t', 's', $1)", T0
        )


# -- missed ticks ------------------------------------------------------------------------------------


async def test_after_ten_minutes_down_only_the_latest_tick_runs(conn: asyncpg.Connection, clocked: Clocked) -> None:
    await make(conn, at(0), "plain", "* * * * *")
    await clocked.at(at(1))
    await clocked.at(at(11.5))  # every daemon was down from just after the first tick
    assert await ticks(conn, "plain") == [(at(1), False), (at(11), False)]
    assert clocked.ticks("plain", "missed") == 9


async def test_a_backfill_runs_each_missed_tick_once_marked(conn: asyncpg.Connection, clocked: Clocked) -> None:
    await make(conn, at(0), "caught-up", "* * * * *", backfill=timedelta(hours=1))
    await clocked.at(at(1))
    await clocked.at(at(11.5))
    await clocked.at(at(11.6))  # a second pass finds nothing more
    assert await ticks(conn, "caught-up") == [(at(m), 2 <= m <= 10) for m in range(1, 12)]
    assert clocked.ticks("caught-up", "backfilled") == 9 and clocked.ticks("caught-up", "enqueued") == 2


async def test_a_re_enabled_or_changed_schedule_never_backfills(conn: asyncpg.Connection, clocked: Clocked) -> None:
    await make(conn, at(0), "s", "* * * * *", backfill=timedelta(hours=1))
    await clocked.at(at(1))
    await pin(conn, at(1.5))
    await conn.execute("UPDATE notifyq.schedules SET enabled = false")
    await clocked.at(at(5.5))
    await pin(conn, at(5.5))
    await conn.execute("UPDATE notifyq.schedules SET enabled = true")
    await clocked.at(at(6.1))
    await pin(conn, at(6.5))
    await conn.execute("UPDATE notifyq.schedules SET cron = '*/2 * * * *'")
    await clocked.at(at(8.1))
    assert [t for t, _ in await ticks(conn, "s")] == [at(1), at(6), at(8)]


# -- time zones --------------------------------------------------------------------------------------

# Expected UTC instants written out by hand from the 2026 transitions (see tests/unit/test_cron.py for the
# rules): Berlin jumps 02:00 -> 03:00 on 29 March and 03:00 -> 02:00 on 25 October; New York 02:00 -> 03:00
# on 8 March and 02:00 -> 01:00 on 1 November.
DST_YEAR = [
    (
        "30 2 * * *",
        "Europe/Berlin",
        [
            ("2026-03-27T23:00Z", "2026-03-28T01:30Z"),
            ("2026-03-28T23:00Z", "2026-03-29T01:00Z"),  # 02:30 does not exist: once, at 03:00 CEST
            ("2026-03-29T23:00Z", "2026-03-30T00:30Z"),
            ("2026-10-23T23:00Z", "2026-10-24T00:30Z"),
            ("2026-10-24T23:00Z", "2026-10-25T00:30Z"),  # 02:30 happens twice: once, the first time
            ("2026-10-25T23:00Z", "2026-10-26T01:30Z"),
        ],
    ),
    (
        "30 2 * * *",
        "America/New_York",
        [
            ("2026-03-07T12:00Z", "2026-03-08T07:00Z"),  # 02:30 does not exist: once, at 03:00 EDT
            ("2026-03-08T12:00Z", "2026-03-09T06:30Z"),
        ],
    ),
    (
        "30 1 * * *",
        "America/New_York",
        [
            ("2026-03-07T12:00Z", "2026-03-08T06:30Z"),
            ("2026-03-08T12:00Z", "2026-03-09T05:30Z"),
            ("2026-10-31T12:00Z", "2026-11-01T05:30Z"),  # 01:30 happens twice: once, EDT
            ("2026-11-01T12:00Z", "2026-11-02T06:30Z"),
        ],
    ),
]


@pytest.mark.parametrize(("expression", "zone", "days"), DST_YEAR)
async def test_dst_across_both_changes_by_moving_the_database_clock(
    conn: asyncpg.Connection, clocked: Clocked, expression: str, zone: str, days: list[tuple[str, str]]
) -> None:
    def utc(text: str) -> datetime:
        return datetime.fromisoformat(text).astimezone(UTC)

    for day, (start, expected) in enumerate(days):
        name = f"dst-{day}"
        await make(conn, utc(start), name, expression, timezone=zone)
        await clocked.at(utc(start))
        shown = await conn.fetchval("SELECT next_tick FROM notifyq.schedules WHERE name = $1", name)
        assert shown == utc(expected), (zone, start)
        await clocked.at(utc(expected) + timedelta(seconds=1))
        assert await ticks(conn, name) == [(utc(expected), False)], (zone, start)
        await conn.execute("UPDATE notifyq.schedules SET enabled = false WHERE name = $1", name)


# -- overlap, broken rules, the tick's job -------------------------------------------------------------


async def test_skip_overlap_skips_while_the_previous_run_is_queued(conn: asyncpg.Connection, clocked: Clocked) -> None:
    await make(conn, at(0), "lonely", "* * * * *", skip_overlap=True)
    await clocked.at(at(1))
    await clocked.at(at(2))
    assert [t for t, _ in await ticks(conn, "lonely")] == [at(1)]
    assert clocked.ticks("lonely", "skipped") == 1
    await conn.execute("UPDATE notifyq.jobs SET state = 'cancelled', finished_at = now()")
    await clocked.at(at(3))
    assert [t for t, _ in await ticks(conn, "lonely")] == [at(1), at(3)]


async def test_the_job_carries_the_schedules_columns(conn: asyncpg.Connection, clocked: Clocked) -> None:
    await make(conn, at(0), "full", "* * * * *", task="reports.build", queue="reports", priority=7,
               max_attempts=3, payload='{"a": 1}')  # fmt: skip
    await clocked.at(at(1))
    job = await conn.fetchrow("SELECT * FROM notifyq.jobs WHERE schedule = 'full'")
    assert (job["task"], job["queue"], job["priority"], job["max_attempts"]) == ("reports.build", "reports", 7, 3)
    assert json.loads(job["payload"]) == {"a": 1} and job["run_at"] == at(1) and job["schedule_tick"] == at(1)
    assert job["state"] == "queued" and not job["backfilled"]


async def test_a_rule_only_the_parser_refuses_is_reported_not_skipped(
    conn: asyncpg.Connection, clocked: Clocked, db_dsn: str
) -> None:
    await make(conn, at(0), "broken", "61 * * * *")
    await make(conn, at(0), "fine", "* * * * *")
    await clocked.at(at(1))
    row = await conn.fetchrow("SELECT error, next_tick FROM notifyq.schedules WHERE name = 'broken'")
    assert row["error"] == "Bad minute" and row["next_tick"] is None
    assert clocked.metrics.registry.get_sample_value("notifyq_schedules_broken") == 1
    assert [t for t, _ in await ticks(conn, "fine")] == [at(1)]
    checked = cli("check", "--dsn", db_dsn)
    assert checked.returncode != 0
    assert "FAIL  schedules: 'broken' ('61 * * * *' in UTC) cannot run: Bad minute" in checked.stdout
    await conn.execute("UPDATE notifyq.schedules SET cron = '1 * * * *' WHERE name = 'broken'")
    assert await conn.fetchval("SELECT error FROM notifyq.schedules WHERE name = 'broken'") is None


# -- notifyq schedules ---------------------------------------------------------------------------------


async def test_cli_lists_shows_toggles_and_triggers(conn: asyncpg.Connection, db_dsn: str) -> None:
    await conn.execute("SELECT notifyq.schedule('nightly', '0 3 * * *', 'reports.build', timezone => 'Europe/Berlin')")
    listed = cli("schedules", "list", "--dsn", db_dsn)
    assert listed.returncode == 0 and "nightly" in listed.stdout and "Europe/Berlin" in listed.stdout
    as_json = json.loads(cli("schedules", "list", "--json", "--dsn", db_dsn).stdout)
    assert as_json["name"] == "nightly" and as_json["enabled"] is True
    shown = json.loads(cli("schedules", "show", "nightly", "--dsn", db_dsn).stdout)
    assert shown["cron"] == "0 3 * * *" and shown["payload"] == {}
    assert cli("schedules", "disable", "nightly", "--dsn", db_dsn).returncode == 0
    assert await conn.fetchval("SELECT enabled FROM notifyq.schedules") is False
    assert cli("schedules", "enable", "nightly", "--dsn", db_dsn).returncode == 0
    assert await conn.fetchval("SELECT enabled FROM notifyq.schedules") is True
    triggered = cli("schedules", "trigger", "nightly", "--dsn", db_dsn)
    assert triggered.returncode == 0 and "enqueued from schedule 'nightly'" in triggered.stdout
    assert await conn.fetchval("SELECT count(*) FROM notifyq.jobs WHERE schedule = 'nightly'") == 1
    missing = cli("schedules", "show", "nope", "--dsn", db_dsn)
    assert missing.returncode != 0 and "no schedule 'nope'" in missing.stderr


async def test_prune_removes_only_code_schedules_no_live_daemon_declares(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    await conn.execute(
        "INSERT INTO notifyq.schedules (name, cron, task, source) VALUES"
        " ('kept-by-a', '* * * * *', 't', 'code'), ('stale', '* * * * *', 't', 'code'),"
        " ('from-sql', '* * * * *', 't', 'sql')"
    )
    refused = cli("schedules", "prune", "--dsn", db_dsn)
    assert refused.returncode != 0 and "no live daemon" in refused.stderr
    await conn.execute(
        "INSERT INTO notifyq.workers (id, hostname, pid, queues, tasks, concurrency, lease_seconds, schedules)"
        " VALUES (gen_random_uuid(), 'a', 1, '{default}', '{t}', 1, 30, '{kept-by-a}'),"
        "        (gen_random_uuid(), 'dead', 2, '{default}', '{t}', 1, 30, '{stale}')"
    )
    await conn.execute("UPDATE notifyq.workers SET last_seen = now() - interval '1 hour' WHERE hostname = 'dead'")
    pruned = cli("schedules", "prune", "--dsn", db_dsn)
    assert pruned.returncode == 0 and "removed 'stale'" in pruned.stdout
    assert {r[0] for r in await conn.fetch("SELECT name FROM notifyq.schedules")} == {"kept-by-a", "from-sql"}


# -- what a hostile review broke ------------------------------------------------------------------------


async def test_a_schedule_row_held_locked_delays_only_its_own_schedule(
    conn: asyncpg.Connection, clocked: Clocked, db_dsn: str
) -> None:
    await make(conn, at(0), "held", "* * * * *")
    await make(conn, at(0), "free", "* * * * *")
    holder = await asyncpg.connect(db_dsn)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT 1 FROM notifyq.schedules WHERE name = 'held' FOR UPDATE")
        # Before, the pass waited on the lock until its statement timed out, and every schedule with it.
        with anyio.fail_after(5):
            wait = await clocked.at(at(1))
        assert wait <= LOCKED_RETRY
        assert await ticks(conn, "free") == [(at(1), False)] and await ticks(conn, "held") == []
        await tx.rollback()
    finally:
        await holder.close()
    await clocked.at(at(1) + timedelta(seconds=1))
    assert await ticks(conn, "held") == [(at(1), False)]


async def test_a_backfill_of_large_payloads_goes_in_statements_of_bounded_size(
    conn: asyncpg.Connection, clocked: Clocked
) -> None:
    big = json.dumps({"x": "a" * 1_000_000})  # the largest payload allowed, near enough
    await make(conn, at(0), "heavy", "*/10 * * * * *", backfill=timedelta(hours=1), payload=big)
    wait = await clocked.at(at(2))  # 12 ticks due: four megabytes of payload per statement
    assert len(await ticks(conn, "heavy")) == scheduler_module.ticks_per_statement(len(big) + 1) == 4
    assert wait <= scheduler_module.MIN_SLEEP  # the rest at once, statement after statement
    for _ in range(3):
        await clocked.at(at(2))
    assert [t for t, _ in await ticks(conn, "heavy")] == [at(s / 6) for s in range(1, 13)]


async def test_schedules_beyond_one_page_all_run(
    conn: asyncpg.Connection, clocked: Clocked, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler_module, "PAGE", 3)
    for i in range(8):
        await make(conn, at(0), f"s{i}", "* * * * *", enabled=i != 4)
    await clocked.at(at(1))
    made = await conn.fetch("SELECT DISTINCT schedule FROM notifyq.jobs ORDER BY 1")
    assert [r[0] for r in made] == [f"s{i}" for i in range(8) if i != 4]


async def test_a_last_tick_ahead_of_the_clock_is_reported_and_re_enabling_clears_it(
    conn: asyncpg.Connection, clocked: Clocked
) -> None:
    await make(conn, at(0), "jumped", "* * * * *")
    await clocked.at(at(60))  # the clock was an hour ahead for one pass
    await clocked.at(at(2))
    error = await conn.fetchval("SELECT error FROM notifyq.schedules WHERE name = 'jumped'")
    assert "ahead of the database clock" in error
    assert clocked.metrics.registry.get_sample_value("notifyq_schedules_broken") == 1
    await pin(conn, at(2))
    await conn.execute("UPDATE notifyq.schedules SET enabled = false")
    await conn.execute("UPDATE notifyq.schedules SET enabled = true")
    await conn.execute("RESET notifyq.now")
    await clocked.at(at(3))
    assert [t for t, _ in await ticks(conn, "jumped")] == [at(3), at(60)]
    assert clocked.metrics.registry.get_sample_value("notifyq_schedules_broken") == 0


async def test_a_triggered_run_never_takes_a_ticks_place(
    conn: asyncpg.Connection, clocked: Clocked, db_dsn: str
) -> None:
    await make(conn, at(0), "t1", "* * * * *")
    store = await Store.open(db_dsn, max_size=1)
    try:
        async with store.connection() as c:
            await pin(c, at(1))  # a run by hand at the very instant of a tick
        assert await store.trigger_schedule("t1") is not None
        assert await store.trigger_schedule("t1") is not None
    finally:
        await store.close()
    await clocked.at(at(1))
    rows = await conn.fetch("SELECT id, schedule_tick FROM notifyq.jobs WHERE schedule = 't1' ORDER BY id")
    assert [r[1] for r in rows] == [None, None, at(1)]
    assert clocked.ticks("t1", "enqueued") == 1
    # The latest run shows in `schedules list`, triggered or not.
    triggered = await clocked.store.trigger_schedule("t1")
    (listed,) = await clocked.store.list_schedules("t1")
    assert listed.last_job_id == triggered and listed.last_job_state == "queued"


async def test_a_tick_whose_job_exists_is_not_counted_again(conn: asyncpg.Connection, clocked: Clocked) -> None:
    await make(conn, at(0), "once", "* * * * *")
    await conn.execute("INSERT INTO notifyq.jobs (task, schedule, schedule_tick) VALUES ('t', 'once', $1)", at(1))
    await clocked.at(at(1))
    assert len(await ticks(conn, "once")) == 1
    assert clocked.ticks("once", "enqueued") == 0


async def test_a_code_schedule_pruned_while_its_daemon_was_paused_is_declared_again(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    registry = Registry()
    registry.periodic("* * * * *", name="mine", task="t")
    store = await Store.open(db_dsn, max_size=1)
    try:
        clocked = Clocked(store, registry.schedules)
        await store.upsert_code_schedules(registry.schedules)
        await conn.execute("DELETE FROM notifyq.schedules")  # `schedules prune` while it was paused
        await clocked.at(at(0))
        row = await conn.fetchrow("SELECT source, since FROM notifyq.schedules WHERE name = 'mine'")
        assert row is not None and row["source"] == "code"
    finally:
        await store.close()


async def test_the_label_of_a_deleted_schedule_is_released(conn: asyncpg.Connection, clocked: Clocked) -> None:
    await make(conn, at(0), "gone", "* * * * *")
    await clocked.at(at(1))
    assert clocked.ticks("gone", "enqueued") == 1
    await conn.execute("DELETE FROM notifyq.schedules")
    await clocked.at(at(2))
    assert clocked.metrics.registry.get_sample_value(
        "notifyq_schedule_ticks_total", {"schedule": "gone", "result": "enqueued"}
    ) is None


async def test_no_write_of_the_scheduler_waits_on_a_row_held_elsewhere(
    conn: asyncpg.Connection, clocked: Clocked, db_dsn: str
) -> None:
    # A row with nothing due (its next tick is written) and a broken one (its error is written), each held.
    await make(conn, at(0), "yearly", "0 0 1 1 *")
    await make(conn, at(0), "broken", "61 * * * *")
    await make(conn, at(0), "free", "* * * * *")
    holder = await asyncpg.connect(db_dsn)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM notifyq.schedules WHERE name <> 'free' FOR UPDATE")
            with anyio.fail_after(5):
                await clocked.at(at(1))
            assert await ticks(conn, "free") == [(at(1), False)]
        await clocked.at(at(1) + timedelta(seconds=1))
    finally:
        await holder.close()
    rows = {r[0]: r[1:] for r in await conn.fetch("SELECT name, next_tick, error FROM notifyq.schedules")}
    assert rows["yearly"][0] == datetime(2027, 1, 1, tzinfo=UTC) and rows["broken"][1] == "Bad minute"


async def test_a_clock_ahead_error_is_written_once_and_a_future_since_is_reported(
    conn: asyncpg.Connection, clocked: Clocked
) -> None:
    await make(conn, at(0), "jumped", "* * * * *")
    await clocked.at(at(60))
    await clocked.at(at(2))
    first = await conn.fetchrow("SELECT error, xmin::text AS version FROM notifyq.schedules")
    await clocked.at(at(3))
    assert await conn.fetchrow("SELECT error, xmin::text AS version FROM notifyq.schedules") == first
    await make(conn, at(90), "ahead", "* * * * *")  # created on a clock an hour and a half ahead
    await clocked.at(at(4))
    error = await conn.fetchval("SELECT error FROM notifyq.schedules WHERE name = 'ahead'")
    assert "start (since)" in error and "ahead of the database clock" in error


async def test_code_schedules_held_elsewhere_are_skipped_then_written(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    registry = Registry()
    registry.periodic("* * * * *", name="a", task="t")
    registry.periodic("* * * * *", name="b", task="t")
    await conn.execute(
        "INSERT INTO notifyq.schedules (name, cron, task, source) VALUES ('a', '0 * * * *', 't', 'code')"
    )
    store = await Store.open(db_dsn, max_size=1)
    holder = await asyncpg.connect(db_dsn)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM notifyq.schedules WHERE name = 'a' FOR UPDATE")
            with anyio.fail_after(5):  # an upsert waits on the held row: a daemon hung at start
                assert await store.upsert_code_schedules(registry.schedules) == 1
        assert await conn.fetchval("SELECT cron FROM notifyq.schedules WHERE name = 'a'") == "0 * * * *"
        assert await conn.fetchval("SELECT source FROM notifyq.schedules WHERE name = 'b'") == "code"
        assert await store.upsert_code_schedules(registry.schedules) == 0
        assert await conn.fetchval("SELECT cron FROM notifyq.schedules WHERE name = 'a'") == "* * * * *"
        version = await conn.fetchval("SELECT xmin::text FROM notifyq.schedules WHERE name = 'a'")
        assert await store.upsert_code_schedules(registry.schedules) == 0  # the same: not even locked
        assert await conn.fetchval("SELECT xmin::text FROM notifyq.schedules WHERE name = 'a'") == version
    finally:
        await holder.close()
        await store.close()


async def test_a_deleted_schedule_is_not_reported_held(conn: asyncpg.Connection, db_dsn: str) -> None:
    await make(conn, at(0), "gone", "* * * * *")
    store = await Store.open(db_dsn, max_size=1)
    try:
        (row,) = [r for r in await store.schedules_for_pass("", 10)]
        await conn.execute("DELETE FROM notifyq.schedules")
        wrote = await store.enqueue_ticks(row, at(1), at(2), [(at(1), False)])
        assert not wrote.advanced and not wrote.locked and wrote.made == 0
    finally:
        await store.close()


async def test_a_name_another_transaction_is_inserting_does_not_hold_up_the_declaration(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    registry = Registry()
    registry.periodic("* * * * *", name="a", task="t")
    store = await Store.open(db_dsn, max_size=1)
    holder = await asyncpg.connect(db_dsn)
    try:
        async with holder.transaction():
            await holder.execute("INSERT INTO notifyq.schedules (name, cron, task) VALUES ('a', '0 3 * * *', 't')")
            with anyio.fail_after(3):
                assert await store.upsert_code_schedules(registry.schedules) == 1  # tried again later
    finally:
        await holder.close()
        await store.close()


async def test_a_code_schedule_the_database_refuses_keeps_no_other_out(conn: asyncpg.Connection, db_dsn: str) -> None:
    registry = Registry()
    registry.periodic("* * * * *", name="good", task="t")
    registry.periodic("* * * * *", name="bad", task="t")
    good, bad = registry.schedules
    bad = dataclasses.replace(bad, timezone="Mars/Olympus")  # what the registry would have refused
    store = await Store.open(db_dsn, max_size=1)
    try:
        clocked = Clocked(store, [good, bad])
        await clocked.at(at(0))
        await clocked.at(at(1))
        assert [r[0] for r in await conn.fetch("SELECT name FROM notifyq.schedules")] == ["good"]
    finally:
        await store.close()


async def test_a_schedule_its_sql_writer_owns_is_not_taken_back_by_code(conn: asyncpg.Connection, db_dsn: str) -> None:
    await conn.execute("SELECT notifyq.schedule('mine', '0 3 * * *', 't')")
    registry = Registry()
    registry.periodic("* * * * *", name="mine", task="t")
    store = await Store.open(db_dsn, max_size=1)
    try:
        assert await store.upsert_code_schedules(registry.schedules) == 0
    finally:
        await store.close()
    row = await conn.fetchrow("SELECT cron, source FROM notifyq.schedules")
    assert (row["cron"], row["source"]) == ("0 3 * * *", "sql")
