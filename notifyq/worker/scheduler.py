"""The scheduler: turns each schedule's ticks into jobs, exactly once however many daemons run.

Every daemon runs one, and none leads. A pass reads the enabled schedules with the database's clock,
works out each one's due ticks (notifyq/cron.py, in the schedule's zone) and makes their jobs with
`enqueue_ticks`, which moves the row's `last_tick` only if the row is still as this daemon read it: of
two daemons on the same tick, one makes the job and the other finds the row moved and does nothing
(sql/queries/schedules.sql). Nothing about the schedules is kept in memory between passes, so a
restart, a crash or a deploy loses no tick and repeats none.

Which ticks run, at a pass at `now`, of the ticks after max(last_tick, since):
- the latest one, if it is at most GRACE late (or within the backfill): an on-time run, or the run of a
  daemon that was briefly down (a deploy, a restart);
- with a backfill, every earlier one within it too, oldest first, at most MAX_TICKS_PER_PASS per pass,
  marked `backfilled`;
- the rest are missed (counted, never run). `since` is set when a schedule is created, re-enabled or its
  rule changes, so none of these ever runs ticks from before (migration 0007).

A pass comes when the next tick falls due, when a schedule changes (its NOTIFY, on the notifier's
connection, which also passes again after every reconnect), and at least every MAX_SLEEP seconds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import anyio

from notifyq import cron, logs
from notifyq.errors import DatabaseUnavailable, QueryError, StatementTimeout
from notifyq.metrics import Metrics
from notifyq.models import PeriodicSpec, ScheduleRow, TickResult
from notifyq.store import Store

CHANNEL = "notifyq.schedules"
GRACE = timedelta(minutes=10)  # how late the latest tick may be and still run without a backfill
MAX_TICKS_PER_PASS = 1000  # backfilled ticks made by one statement; the next pass goes on at once
# ... and fewer for a large payload: the ticks of one statement copy at most this much payload, so that a
# backfill of megabyte payloads stays well inside the statement timeout.
TICK_BYTES_PER_STATEMENT = 4 << 20
PAGE = 1000  # schedules read per statement of a pass
CLOCK_SLACK = timedelta(minutes=1)  # a last tick this far ahead of the clock is reported, not waited out
LOCKED_RETRY = 1.0  # a schedule row someone else held: look again this soon
# A pass at least this often with schedules to watch, and with none: every change is notified, and a
# reconnect of the notifier passes again, so these only bound how far a clock may drift unseen (and
# keep an idle daemon at no statements of its own).
MAX_SLEEP = 600.0
IDLE_SLEEP = 3600.0
RETRY_SLEEP = 5.0  # after a failed pass or tick
MIN_SLEEP = 0.01
MISSED_COUNT_CAP = 10_000  # missed ticks counted one by one, at most (a week of per-second ticks is not)
_EPSILON = 0.002  # wake this much after a tick, so the database's clock has reached it


@dataclass(frozen=True, slots=True)
class Plan:
    """What one pass does for one schedule."""

    run: list[tuple[datetime, bool]]  # (tick, backfilled) to make jobs of, oldest first
    missed: int  # due ticks that will never run
    through: datetime | None  # the schedule's new last_tick; None when nothing is due
    next_tick: datetime | None  # the first tick after `through` (or after now, when nothing is due)
    first_due: datetime | None  # the oldest tick due and not yet handled (for the lag gauge)
    skipped: int = 0  # due ticks dropped by skip_overlap before the statement (only the latest may run)


def ticks_per_statement(payload_bytes: int) -> int:
    return max(1, min(MAX_TICKS_PER_PASS, TICK_BYTES_PER_STATEMENT // max(payload_bytes, 1)))


def plan(rule: cron.Cron, row: ScheduleRow) -> Plan:
    """The ticks due at `row.now` and what becomes of each (see the module docstring)."""
    anchor = max(row.since, row.last_tick) if row.last_tick is not None else row.since
    first_due = rule.after(anchor)
    if first_due is None or first_due > row.now:
        return Plan([], 0, None, first_due, None)
    step = _plan(rule, row, anchor, first_due)
    if row.skip_overlap and len(step.run) > 1:
        # One run at a time: of the ticks this pass would make, only the latest may run.
        return Plan(step.run[-1:], step.missed, step.through, step.next_tick, first_due, len(step.run) - 1)
    return step


def _plan(rule: cron.Cron, row: ScheduleRow, anchor: datetime, first_due: datetime) -> Plan:
    now = row.now
    backfill = timedelta(seconds=row.backfill_seconds)
    if backfill > timedelta(0):
        # More backfilled ticks than one statement may carry: the oldest go now, the rest at the next
        # pass, at once. Only ticks the backfill covers: those it does not are missed, however many.
        start = max(anchor, now - backfill)
        limit = ticks_per_statement(row.payload_bytes)
        covered = rule.between(start, now, limit + 1)
        if len(covered) > limit:
            missed = len(rule.between(anchor, start, MISSED_COUNT_CAP)) if start > anchor else 0
            run = [(t, True) for t in covered[:limit]]
            return Plan(run, missed, covered[limit - 1], covered[limit], first_due)
    window_start = max(anchor, now - max(backfill, GRACE))
    missed = len(rule.between(anchor, window_start, MISSED_COUNT_CAP)) if window_start > anchor else 0
    # At most a statement's worth of backfilled ticks (just checked) and a grace's worth of the rest.
    ticks = rule.between(window_start, now, MISSED_COUNT_CAP + MAX_TICKS_PER_PASS)
    latest = ticks[-1] if ticks else None
    run = []
    for tick in ticks:
        # Strictly younger than the grace or the backfill, as the window's open start is.
        on_time = tick == latest and now - tick < GRACE
        if on_time or now - tick < backfill:
            run.append((tick, not on_time))
        else:
            missed += 1
    through = latest if latest is not None else window_start
    return Plan(run, missed, through, rule.after(max(through, now)), first_due)


class ScheduleTopic:
    """The notifier's side: a schedule changed (or the connection came back), so pass again now."""

    channel = CHANNEL
    pending = False  # no session state to keep on the notifier's connection

    def __init__(self, changed: Callable[[], None]) -> None:
        self._on_change = changed

    def bind(self, changed: Callable[[], None]) -> None:
        pass

    async def sync(self, session: object) -> None:
        pass

    def on_message(self, payload: str) -> None:
        self._on_change()

    def on_connected(self) -> None:
        self._on_change()  # a change notified while the connection was down is found by this pass

    def on_disconnected(self) -> None:
        pass


class Scheduler:
    def __init__(self, store: Store, metrics: Metrics, declared: Sequence[PeriodicSpec] = ()) -> None:
        self._store = store
        self._metrics = metrics
        self._declared = list(declared)  # this daemon's code schedules (@registry.periodic)
        self._undeclared = bool(self._declared)  # some are still to be written (held, failed, or gone)
        self._refused: dict[str, str] = {}  # code schedules the database refused, and why (logged once)
        self._declare_said: str | None = None  # the last thing logged about declaring (each cause once)
        self._changed = anyio.Event()
        self._errors: dict[str, str] = {}  # schedule -> the error last logged for it
        self._locked: dict[str, int] = {}  # schedule -> passes in a row that found it held elsewhere
        self._log = logs.get("scheduler")

    def changed(self) -> None:
        self._changed.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        # The code's schedules are written before the daemon says it is ready, when the database lets
        # it; never deleted (during a rolling deploy the daemons on the old code keep theirs).
        with contextlib.suppress(DatabaseUnavailable, QueryError):  # logged; the passes try again
            await self._declare()
        task_status.started()
        failures = 0
        while True:
            self._changed = anyio.Event()
            try:
                wait = await self.pass_once()
                failures = 0
            except (DatabaseUnavailable, QueryError) as exc:
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    self._log.warning("scheduler_failed", error=str(exc), failures=failures)
                wait = min(RETRY_SLEEP * failures, 60.0)
            with anyio.move_on_after(wait):
                await self._changed.wait()

    async def pass_once(self) -> float:
        """One pass over the enabled schedules, page by page; returns the seconds until the next is due."""
        wait = IDLE_SLEEP
        broken = 0
        lag: dict[str, float] = {}
        seen: set[str] = set()
        after = ""
        while True:
            rows = await self._store.schedules_for_pass(after, PAGE)
            for row in rows:
                seen.add(row.name)
                if not row.enabled:
                    continue
                wait = min(wait, MAX_SLEEP)
                try:
                    step = await self._plan(row)
                    if step is None:
                        broken += 1
                        continue
                    lag[row.name], retry_in = await self._apply(row, step)
                except (QueryError, StatementTimeout) as exc:
                    # A failed or slow write of this schedule's (its error, its next tick): its own
                    # failure, tried again soon; the other schedules go on.
                    self._log.warning("schedule_write_failed", schedule=row.name, error=str(exc))
                    wait = min(wait, RETRY_SLEEP)
                    continue
                if retry_in is not None:
                    wait = min(wait, retry_in)
                elif step.next_tick is not None:
                    wait = min(wait, (step.next_tick - row.now).total_seconds() + _EPSILON)
            if len(rows) < PAGE:
                break
            after = rows[-1].name
        for memo in (self._errors, self._locked):
            for name in [n for n in memo if n not in seen]:
                del memo[name]  # deleted schedules
        gone = [p.name for p in self._declared if p.name not in seen and p.name not in self._refused]
        if gone and not self._undeclared:
            # Pruned while this daemon could not show it was alive (paused past its lease), or deleted:
            # the code it runs still declares them. Written back as new schedules, so they never
            # backfill the gap (disable a code schedule to stop it; a deleted one comes back).
            self._log.warning("schedules_declared_again", schedules=gone[:20], count=len(gone))
            self._undeclared = True
        if self._undeclared:
            try:
                wait = MIN_SLEEP if await self._declare() else min(wait, RETRY_SLEEP)
            except (QueryError, StatementTimeout):
                wait = min(wait, RETRY_SLEEP)
        self._metrics.set_schedule_state(lag, broken, seen)
        return max(MIN_SLEEP, wait)

    async def _declare(self) -> bool:
        """Write the code's schedules; True once all are written (a row held locked elsewhere, or a
        failed statement, leaves them for a later pass; one the database refuses is logged and left)."""
        specs = [p for p in self._declared if p.name not in self._refused]
        try:
            try:
                held = await self._store.upsert_code_schedules(specs)
            except QueryError:
                # One definition the database refuses (the registry checks what it can) must not keep
                # the others out: each alone, and the refused ones named.
                held = 0
                for spec in specs:
                    try:
                        held += await self._store.upsert_code_schedules([spec])
                    except QueryError as exc:
                        self._refused[spec.name] = str(exc)
                        self._log.error("schedule_refused", schedule=spec.name, error=str(exc))
        except StatementTimeout as exc:
            self._say("error", "schedules_not_declared", error=str(exc), count=len(specs))
            raise
        self._undeclared = held > 0
        if held:
            self._say("info", "schedules_held", count=held, reason="locked or being written elsewhere")
        else:
            self._declare_said = None
        return not self._undeclared

    def _say(self, level: str, event: str, **fields: object) -> None:
        """Log about declaring, once for each cause (the same one at every retry is noise)."""
        said = f"{event} {sorted(fields.items())}"
        if said != self._declare_said:
            self._declare_said = said
            getattr(self._log, level)(event, **fields)

    async def _plan(self, row: ScheduleRow) -> Plan | None:
        """This pass's plan for one schedule, or None when its ticks cannot be computed (reported)."""
        for what, when in (("last tick", row.last_tick), ("start (since)", row.since)):
            if when is not None and when - row.now > CLOCK_SLACK:
                # The same text at every pass, so that it is written and logged once.
                await self._broken(
                    row,
                    f"its {what}, {when.isoformat()}, is ahead of the database clock: the clock was"
                    " stepped back, or notifyq.now() moved; no tick runs until then (disable and enable"
                    " the schedule to start again from now)",
                )
                return None
        try:
            step = plan(cron.parse(row.cron, row.timezone), row)
        except cron.CronError as exc:
            await self._broken(row, str(exc))
            return None
        except Exception as exc:
            # One row the parser chokes on must not stop the daemon (a `since` or a clock near year
            # 9999 overflows its date arithmetic, for one).
            await self._broken(row, f"cannot compute its ticks: {type(exc).__name__}: {exc}"[:500])
            return None
        self._errors.pop(row.name, None)
        return step

    async def _apply(self, row: ScheduleRow, step: Plan) -> tuple[float, float | None]:
        """Make the plan's jobs; returns the schedule's lag afterwards (seconds its oldest due tick has
        waited unmade: 0 when it keeps up), and, when it must be tried again before its next tick, in
        how many seconds."""
        if step.through is None:
            if step.next_tick != row.next_tick or row.error is not None:
                await self._store.set_next_tick(row, step.next_tick)
            return 0.0, None
        late = (row.now - step.first_due).total_seconds() if step.first_due is not None else 0.0
        try:
            wrote = await self._store.enqueue_ticks(row, step.through, step.next_tick, step.run)
        except (QueryError, StatementTimeout) as exc:
            # Refused by the jobs table (a row changed by hand past its limits), or too slow: a failure of
            # this schedule only. Its ticks stay due, tried again soon; it shows as late meanwhile.
            self._metrics.schedule_ticks(row.name, TickResult.FAILED, len(step.run) or 1)
            self._log.warning("schedule_tick_failed", schedule=row.name, error=str(exc))
            return late, RETRY_SLEEP
        if wrote.locked:
            # Once is a competing daemon making this tick; twice in a row, someone holds the row.
            tries = self._locked[row.name] = self._locked.get(row.name, 0) + 1
            if tries == 2:
                self._log.info("schedule_row_held", schedule=row.name, retry_in_s=LOCKED_RETRY)
            return late, LOCKED_RETRY
        self._locked.pop(row.name, None)
        if not wrote.advanced:
            return 0.0, None  # another daemon made these (or the row changed): its pass counts them
        if step.missed:
            self._metrics.schedule_ticks(row.name, TickResult.MISSED, step.missed)
            self._log.warning("schedule_ticks_missed", schedule=row.name, ticks=step.missed)
        if step.skipped:
            self._metrics.schedule_ticks(row.name, TickResult.SKIPPED, step.skipped)
        if wrote.skipped:
            self._metrics.schedule_ticks(row.name, TickResult.SKIPPED, len(step.run))
            self._log.info("schedule_tick_skipped", schedule=row.name, reason="previous run not finished")
        else:
            # What was made: a tick whose job already exists (the unique key) makes none and counts none.
            if wrote.made_backfilled:
                self._metrics.schedule_ticks(row.name, TickResult.BACKFILLED, wrote.made_backfilled)
            on_time = wrote.made - wrote.made_backfilled
            if on_time:
                self._metrics.schedule_ticks(row.name, TickResult.ENQUEUED, on_time)
        if step.next_tick is not None and step.next_tick <= row.now:
            return (row.now - step.next_tick).total_seconds(), None  # a backfill still going on
        return 0.0, None

    async def _broken(self, row: ScheduleRow, error: str) -> None:
        """A rule only the parser could judge wrong: on the row, in the log (once), in the gauge."""
        if row.error != error:
            await self._store.set_schedule_error(row, error)
        if self._errors.get(row.name) != error:
            self._errors[row.name] = error
            self._log.error(
                "schedule_broken", schedule=row.name, cron=row.cron, timezone=row.timezone, error=error
            )
