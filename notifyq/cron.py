"""Cron expressions: when a schedule's ticks fall, as UTC instants.

A small adapter over cronsim (a maintained parser that follows Debian cron, DST included), so that the
rest of notifyq sees one question, "the ticks after this instant", and never the library. What it adds:

- an optional sixth field, first, for seconds (`*/5 * * * * *`: every five seconds), as Quartz and
  Spring write it; a tick is then each listed second of each minute the other five fields match;
- the `@hourly`, `@daily` (`@midnight`), `@weekly`, `@monthly` and `@yearly` (`@annually`) aliases.

Time zones, as Debian cron does (cronsim's own rules): a job at a fixed local time that does not exist
on the spring-forward day (02:30 in Europe/Berlin) runs once, just after the jump (03:00 local); one at
a fixed time that happens twice on the fall-back day (02:30 in Europe/Berlin, 01:30 in New York) runs
once, the first time. Jobs with a `*` in the minute or hour field run by the clock's real passage: every
hour of the repeated hour runs, none of the skipped one.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MINUTE = timedelta(minutes=1)
_DIGITS = re.compile(r"[0-9]{1,2}")
_NOT_CRON_TEXT = re.compile(r"[^\x20-\x7e\t]")


class CronError(ValueError):
    """An expression or zone the parser refuses; the message says which part and why."""


@dataclass(frozen=True, slots=True)
class Cron:
    expression: str
    zone: ZoneInfo
    minutes: str  # the five minute-resolution fields, aliases expanded
    seconds: tuple[int, ...]  # the seconds of each matching minute, ascending ((0,) with five fields)

    def after(self, instant: datetime) -> datetime | None:
        """The first tick strictly after `instant` (UTC), or None if there is none within 50 years."""
        return next(self.ticks_after(instant), None)

    def ticks_after(self, instant: datetime) -> Iterator[datetime]:
        """Every tick strictly after `instant`, in order, as UTC instants."""
        # cronsim yields the minutes after the one it starts in; start a minute early so that the
        # minute holding `instant` is seen too (its later seconds may still be ahead). The minute is taken
        # off in UTC: on local wall time, 03:00 on a spring-forward day would become 02:59, a time that
        # does not exist, from which cronsim skips the whole next hour.
        for minute in CronSim(self.minutes, (instant - _MINUTE).astimezone(self.zone)):
            start = minute.astimezone(UTC)
            for second in self.seconds:
                tick = start + timedelta(seconds=second)
                if tick > instant:
                    yield tick

    def between(self, start: datetime, end: datetime, limit: int) -> list[datetime]:
        """The ticks in (start, end], oldest first, at most `limit` of them."""
        found: list[datetime] = []
        for tick in self.ticks_after(start):
            if tick > end or len(found) >= limit:
                break
            found.append(tick)
        return found


@functools.lru_cache(maxsize=1024)
def parse(expression: str, timezone: str) -> Cron:
    """A Cron for `expression` read in `timezone` (an IANA name); CronError says what is wrong."""
    if timezone.startswith("right/"):
        # Leap-second zones: Python has them, Postgres does not (its guard refuses them at INSERT).
        raise CronError(f"time zone {timezone!r} counts leap seconds; use the zone without 'right/'")
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CronError(f"unknown time zone {timezone!r}") from exc
    if _NOT_CRON_TEXT.search(expression):
        # The guard's rule too: any other space (a newline, a no-break space) would split fields the
        # guard did not count.
        raise CronError(f"{expression!r}: only printable ASCII, with fields apart by spaces or tabs")
    text = " ".join(expression.split())
    if text.startswith("@"):
        if text.lower() not in _ALIASES:
            raise CronError(f"unknown alias {text!r}; known: {', '.join(sorted(_ALIASES))}")
        text = _ALIASES[text.lower()]
    fields = text.split(" ")
    if len(fields) not in (5, 6):
        raise CronError(
            f"{len(fields)} fields; expected 5 (minute hour day-of-month month day-of-week)"
            " or 6 (seconds first)"
        )
    seconds = _seconds(fields[0]) if len(fields) == 6 else (0,)
    minutes = " ".join(fields[-5:])
    try:
        probe = CronSim(minutes, datetime(2000, 1, 1, tzinfo=zone))
    except CronSimError as exc:
        raise CronError(str(exc)) from exc
    try:
        next(probe)
    except StopIteration:
        raise CronError("it never matches (no such date within 50 years)") from None
    return Cron(expression=expression, zone=zone, minutes=minutes, seconds=seconds)


def _seconds(field: str) -> tuple[int, ...]:
    """The seconds field, with cron's syntax: `*`, numbers, ranges `a-b`, steps `/n`, lists."""
    chosen: set[int] = set()
    for term in field.split(","):
        base, slash, step_text = term.partition("/")
        step = _number(step_text, 1, 59) if slash else 1
        if base == "*":
            low, high = 0, 59
        elif "-" in base:
            first, _, last = base.partition("-")
            low, high = _number(first, 0, 59), _number(last, 0, 59)
            if high < low:
                raise CronError(f"bad seconds field {field!r}: range {base!r} runs backwards")
        else:
            low = _number(base, 0, 59)
            high = 59 if slash else low
        chosen.update(range(low, high + 1, step))
    return tuple(sorted(chosen))


def _number(text: str, low: int, high: int) -> int:
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise CronError(f"bad seconds field: {text!r} is not a number from {low} to {high}")
    return int(text)
