"""A test app for daemons run as processes: two every-second schedules of one no-op task, one with a
backfill and one without (tests/faults/test_schedules_kill.py)."""

from __future__ import annotations

from datetime import timedelta

from notifyq import Job, Registry

registry = Registry()


@registry.periodic("* * * * * *", name="every-second", backfill=timedelta(minutes=5))
@registry.task("periodic.tick")
async def tick(job: Job) -> None:
    return None


registry.periodic("* * * * * *", name="every-second-plain", task="periodic.tick")
