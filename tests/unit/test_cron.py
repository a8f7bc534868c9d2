"""The cron adapter (notifyq/cron.py) and the scheduler's plan of which ticks run (no database here: the
database-clock tests are in tests/integration/test_schedules.py)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifyq import cron
from notifyq.models import ScheduleRow
from notifyq.worker.scheduler import GRACE, MAX_TICKS_PER_PASS, plan

pytestmark = pytest.mark.timeout(30)

T0 = datetime(2026, 3, 2, 12, 0, 0, tzinfo=UTC)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def test_five_fields_every_minute_strictly_after() -> None:
    rule = cron.parse("* * * * *", "UTC")
    assert rule.after(T0) == T0 + timedelta(minutes=1)
    assert rule.after(T0 + timedelta(seconds=1)) == T0 + timedelta(minutes=1)
    assert rule.between(T0, T0 + timedelta(minutes=3), 10) == [T0 + timedelta(minutes=i) for i in (1, 2, 3)]


def test_six_fields_put_seconds_first() -> None:
    rule = cron.parse("*/20 * * * * *", "UTC")
    assert rule.between(T0, T0 + timedelta(minutes=1), 10) == [
        T0 + timedelta(seconds=s) for s in (20, 40, 60)
    ]
    assert cron.parse("5-7,30 0 12 * * *", "UTC").between(T0, T0 + timedelta(days=1), 10) == [
        T0 + timedelta(seconds=s) for s in (5, 6, 7, 30)
    ]
    # The minute the instant falls in still counts: its later seconds are ahead.
    assert cron.parse("* * * * * *", "UTC").after(T0 + timedelta(seconds=30.5)) == T0 + timedelta(seconds=31)


def test_aliases() -> None:
    assert cron.parse("@daily", "UTC").after(T0) == datetime(2026, 3, 3, tzinfo=UTC)
    assert cron.parse("@hourly", "UTC").after(T0) == T0 + timedelta(hours=1)
    assert cron.parse("@monthly", "UTC").after(T0) == datetime(2026, 4, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "zone", "message"),
    [
        ("* * * *", "UTC", "4 fields"),
        ("* * * * * * *", "UTC", "7 fields"),
        ("61 * * * *", "UTC", "Bad minute"),
        ("0 0 31 2 *", "UTC", "day-of-month"),
        ("60 * * * * *", "UTC", "seconds"),
        ("*/0 * * * * *", "UTC", "seconds"),
        ("9-3 * * * * *", "UTC", "backwards"),
        ("@reboot", "UTC", "unknown alias"),
        ("* * * * *", "Mars/Olympus", "unknown time zone"),
        ("¹ * * * * *", "UTC", "printable ASCII"),
        ("*\u00a0* * * *", "UTC", "printable ASCII"),  # a no-break space: Python's split() splits on it
        ("0 * * * *\n*", "UTC", "printable ASCII"),  # the guard would count 5 fields, split() 6
        ("* * * * *", "right/UTC", "leap seconds"),
    ],
)
def test_refusals_say_what_is_wrong(expression: str, zone: str, message: str) -> None:
    with pytest.raises(cron.CronError, match=message):
        cron.parse(expression, zone)


# Debian cron's rules, written out by hand from the 2026 transitions. Europe/Berlin: 29 March 02:00 CET
# -> 03:00 CEST, 25 October 03:00 CEST -> 02:00 CET. America/New_York: 8 March 02:00 EST -> 03:00 EDT,
# 1 November 02:00 EDT -> 01:00 EST.
DST_CASES = [
    # A fixed time that does not exist runs once, at the jump (03:00 CEST = 01:00 UTC).
    ("30 2 * * *", "Europe/Berlin", "2026-03-28T00:00Z", 3, ["2026-03-28T01:30Z", "2026-03-29T01:00Z", "2026-03-30T00:30Z"]),
    # A fixed time that happens twice runs once, the first time (02:30 CEST = 00:30 UTC).
    ("30 2 * * *", "Europe/Berlin", "2026-10-24T00:00Z", 3, ["2026-10-24T00:30Z", "2026-10-25T00:30Z", "2026-10-26T01:30Z"]),
    ("30 2 * * *", "America/New_York", "2026-03-07T00:00Z", 3, ["2026-03-07T07:30Z", "2026-03-08T07:00Z", "2026-03-09T06:30Z"]),
    ("30 1 * * *", "America/New_York", "2026-10-31T00:00Z", 3, ["2026-10-31T05:30Z", "2026-11-01T05:30Z", "2026-11-02T06:30Z"]),
    # A wildcard hour runs by the clock's passage: the skipped hour has no tick, the repeated one two.
    ("0 * * * *", "America/New_York", "2026-03-08T05:30Z", 3, ["2026-03-08T06:00Z", "2026-03-08T07:00Z", "2026-03-08T08:00Z"]),
    ("0 * * * *", "America/New_York", "2026-11-01T04:30Z", 4, ["2026-11-01T05:00Z", "2026-11-01T06:00Z", "2026-11-01T07:00Z", "2026-11-01T08:00Z"]),
]  # fmt: skip


@pytest.mark.parametrize(("expression", "zone", "start", "count", "expected"), DST_CASES)
def test_dst_as_debian_cron(expression: str, zone: str, start: str, count: int, expected: list[str]) -> None:
    rule = cron.parse(expression, zone)
    ticks = rule.between(utc(start), utc(start) + timedelta(days=10), count)
    assert ticks == [utc(e) for e in expected]


# The passes of a scheduler ask for one tick after another: each answer must be the same as a single run
# over the day, above all on the DST days (a start on 03:00 local after the jump once skipped the hour).
@pytest.mark.parametrize("zone", ["America/New_York", "Europe/Berlin", "Australia/Lord_Howe"])
@pytest.mark.parametrize("expression", ["*/10 * * * *", "*/20 * * * * *", "15,45 2-3 * * *", "30 2 * * *"])
@pytest.mark.parametrize("day", ["2026-03-08", "2026-03-29", "2026-04-05", "2026-10-04", "2026-10-25", "2026-11-01"])
def test_one_tick_after_another_is_the_same_as_one_run(zone: str, expression: str, day: str) -> None:
    rule = cron.parse(expression, zone)
    start = utc(day + "T00:00")
    end = start + timedelta(days=1)
    chained, tick = [], rule.after(start)
    while tick is not None and tick <= end:
        chained.append(tick)
        tick = rule.after(tick)
    assert chained == rule.between(start, end, 100_000)


def test_the_first_hour_after_spring_forward_keeps_its_ticks() -> None:
    rule = cron.parse("*/10 * * * *", "America/New_York")
    # 07:00 UTC is 03:00 EDT, the first minute after the jump: the next tick is 03:10, not 04:00.
    assert rule.after(utc("2026-03-08T07:00")) == utc("2026-03-08T07:10")


def row(now: datetime, since: datetime, last_tick: datetime | None = None, backfill: float = 0.0,
        skip_overlap: bool = False) -> ScheduleRow:  # fmt: skip
    return ScheduleRow(
        now=now,
        name="s",
        cron="",
        timezone="UTC",
        since=since,
        last_tick=last_tick,
        next_tick=None,
        updated_at=since,
        backfill_seconds=backfill,
        skip_overlap=skip_overlap,
        error=None,
    )


EVERY_MINUTE = cron.parse("* * * * *", "UTC")


def test_plan_on_time_tick() -> None:
    step = plan(EVERY_MINUTE, row(T0 + timedelta(minutes=1, seconds=0.2), T0))
    assert step.run == [(T0 + timedelta(minutes=1), False)]
    assert step.through == T0 + timedelta(minutes=1) and step.next_tick == T0 + timedelta(minutes=2)
    assert step.missed == 0


def test_plan_nothing_due_says_when_next() -> None:
    step = plan(EVERY_MINUTE, row(T0 + timedelta(seconds=30), T0))
    assert step.run == [] and step.through is None and step.next_tick == T0 + timedelta(minutes=1)


def test_plan_after_downtime_runs_only_the_latest_without_backfill() -> None:
    now = T0 + timedelta(minutes=10, seconds=30)
    step = plan(EVERY_MINUTE, row(now, T0))
    assert step.run == [(T0 + timedelta(minutes=10), False)]
    assert step.missed == 9 and step.through == T0 + timedelta(minutes=10)


def test_plan_with_backfill_runs_each_missed_tick_once_marked() -> None:
    now = T0 + timedelta(minutes=10, seconds=30)
    step = plan(EVERY_MINUTE, row(now, T0, backfill=3600))
    assert step.run == [(T0 + timedelta(minutes=i), i != 10) for i in range(1, 11)]
    assert step.missed == 0


def test_plan_backfill_window_bounds_what_runs() -> None:
    now = T0 + timedelta(hours=2)
    step = plan(EVERY_MINUTE, row(now, T0, backfill=1800))  # 30 minutes of a 2-hour gap
    assert step.run[0] == (now - timedelta(minutes=29), True) and step.run[-1] == (now, False)
    assert len(step.run) == 30 and step.missed == 90


def test_plan_latest_tick_too_late_is_missed() -> None:
    daily = cron.parse("0 3 * * *", "UTC")
    since = datetime(2026, 3, 1, tzinfo=UTC)
    step = plan(daily, row(datetime(2026, 3, 1, 3, 0, tzinfo=UTC) + GRACE + timedelta(seconds=1), since))
    assert step.run == [] and step.missed == 1
    assert step.next_tick == datetime(2026, 3, 2, 3, 0, tzinfo=UTC)


def test_plan_caps_a_long_backfill_and_goes_on_next_pass() -> None:
    every_second = cron.parse("* * * * * *", "UTC")
    now = T0 + timedelta(hours=1)
    step = plan(every_second, row(now, T0, backfill=7200))
    assert len(step.run) == MAX_TICKS_PER_PASS and all(late for _, late in step.run)
    assert step.through == T0 + timedelta(seconds=MAX_TICKS_PER_PASS)
    assert step.next_tick is not None and step.next_tick <= now


@pytest.mark.parametrize(("backfill", "backfilled"), [(0, []), (120, [6])])
def test_a_large_payload_never_makes_a_tick_run_that_its_backfill_does_not_cover(
    backfill: int, backfilled: list[int]
) -> None:
    # A megabyte payload allows 4 ticks per statement; the 6 ticks due after a 6-minute outage (12:02 to
    # 12:07) once all ran, backfilled, whatever the schedule's backfill said.
    now = T0 + timedelta(minutes=7, seconds=5)
    late = row(now, T0, last_tick=T0 + timedelta(minutes=1), backfill=backfill)
    step = plan(EVERY_MINUTE, dataclasses.replace(late, payload_bytes=1 << 20))
    expected = [(T0 + timedelta(minutes=m), True) for m in backfilled] + [(T0 + timedelta(minutes=7), False)]
    assert step.run == expected
    assert step.missed == 6 - len(expected)


def test_plan_skip_overlap_keeps_only_the_latest() -> None:
    now = T0 + timedelta(minutes=5, seconds=1)
    step = plan(EVERY_MINUTE, row(now, T0, backfill=3600, skip_overlap=True))
    assert step.run == [(T0 + timedelta(minutes=5), False)] and step.skipped == 4


@settings(max_examples=200, deadline=None)
@given(
    gap=st.integers(min_value=0, max_value=4 * 3600),
    backfill=st.sampled_from([0, 60, 600, 3600, 86400]),
    expression=st.sampled_from(["* * * * *", "*/7 * * * *", "*/13 * * * * *", "0 */2 * * *"]),
)
def test_plan_never_runs_a_tick_twice_nor_one_outside_the_rules(gap: int, backfill: int, expression: str) -> None:
    """Passes repeated until nothing is due: each tick runs at most once, every tick in the backfill
    window (or the latest, within the grace) runs, and nothing at or before `since` does."""
    rule = cron.parse(expression, "UTC")
    now = T0 + timedelta(seconds=gap)
    last: datetime | None = None
    made: list[datetime] = []
    for _ in range(1000):
        step = plan(rule, row(now, T0, last, backfill=backfill))
        if step.through is None:
            break
        made += [t for t, _ in step.run]
        assert last is None or step.through > last
        last = step.through
    assert len(made) == len(set(made)) and all(T0 < t <= now for t in made)
    due = rule.between(T0, now, 100_000)
    window = [t for t in due if now - t < timedelta(seconds=backfill)]
    if due and now - due[-1] < GRACE:
        window = sorted(set(window) | {due[-1]})
    assert made == window


# -- @registry.periodic: refused when declared, never at the daemon's start ------------------------------


@pytest.mark.parametrize(
    ("cron_expression", "options", "message"),
    [
        ("* * * *", {}, "4 fields"),
        ("* * * * *", {"tz": "Mars/Olympus"}, "unknown time zone"),
        ("* * * * *", {"tz": "right/UTC"}, "leap seconds"),  # Python knows it, Postgres does not
        ("*\u00a0* * * *", {}, "printable ASCII"),
        ("* * * * *", {"payload": {"a": "x\x00y"}}, "NUL"),
        ("* * * * *", {"payload": {"a": object()}}, "payload"),
        ("* * * * *", {"payload": float("nan")}, "payload"),
        ("* * * * *", {"payload": [0] * 400_000}, "as Postgres writes it"),  # 800 kB compact, 1.2 MB as jsonb
        ("* * * * *", {"backfill": timedelta(days=-1)}, "backfill"),
        ("* * * * *", {"backfill": 3600}, "backfill"),
        ("* * * * *", {"name": "bad\nname"}, "printable"),
        ("* * * * *", {"queue": "Bad Queue"}, "queue"),
        ("* * * * *", {"priority": 5000}, "priority"),
        ("* * * * *", {"max_attempts": 0}, "max_attempts"),
    ],
)
def test_periodic_refuses_what_the_schedules_table_would(cron_expression: str, options: dict[str, object],
                                                          message: str) -> None:  # fmt: skip
    from notifyq.registry import Registry

    declared: dict[str, object] = {"name": "s", "task": "t", **options}
    with pytest.raises(ValueError, match=message):
        Registry().periodic(cron_expression, **declared)  # type: ignore[arg-type]


def test_periodic_allows_a_nul_escaped_as_text_and_refuses_a_name_twice() -> None:
    from notifyq.registry import Registry

    registry = Registry()
    registry.periodic("* * * * *", name="s", task="t", payload={"a": "\\u0000"})  # a backslash, not a NUL
    with pytest.raises(ValueError, match="declared twice"):
        registry.periodic("* * * * *", name="s", task="t")
