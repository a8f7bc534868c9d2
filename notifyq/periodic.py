"""`notifyq schedules`: list, show, enable, disable, trigger and prune schedules (migration 0007)."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from notifyq.config import Settings
from notifyq.models import ScheduleDetail
from notifyq.status import _table, document
from notifyq.store import Store


async def _open(settings: Settings) -> Store:
    return await Store.open(settings.dsn, max_size=1, statement_cache_size=settings.statement_cache_size)


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S%z")


def _document(row: ScheduleDetail, *, indent: bool = False) -> str:
    return document(dataclasses.asdict(row), ("payload",), indent=indent)


async def listing(settings: Settings, as_json: bool) -> str:
    store = await _open(settings)
    try:
        rows = await store.list_schedules()
    finally:
        await store.close()
    if as_json:
        return "\n".join(_document(r) for r in rows)
    table = [
        [
            r.name,
            r.cron,
            r.timezone,
            r.task,
            "yes" if r.enabled else "no",
            r.source,
            _when(r.last_tick),
            _when(r.next_tick) if r.enabled else "-",
            (r.last_job_state or "-") if r.error is None else f"ERROR: {r.error}",
        ]
        for r in rows
    ]
    headers = ["NAME", "CRON", "ZONE", "TASK", "ENABLED", "SOURCE", "LAST_TICK", "NEXT_TICK", "LAST_RUN"]
    return _table(headers, table) if table else "(no schedules)"


async def detail(settings: Settings, name: str) -> str | None:
    store = await _open(settings)
    try:
        rows = await store.list_schedules(name)
    finally:
        await store.close()
    if not rows:
        return None
    return _document(rows[0], indent=True)


async def set_enabled(settings: Settings, name: str, enabled: bool) -> bool:
    store = await _open(settings)
    try:
        return await store.set_schedule_enabled(name, enabled)
    finally:
        await store.close()


async def trigger(settings: Settings, name: str) -> int | None:
    store = await _open(settings)
    try:
        return await store.trigger_schedule(name)
    finally:
        await store.close()


async def prune(settings: Settings) -> tuple[list[str], int]:
    """The code schedules removed, and how many daemons are alive (none: nothing is removed)."""
    store = await _open(settings)
    try:
        alive = len(await store.live_workers())
        return (await store.prune_code_schedules() if alive else []), alive
    finally:
        await store.close()
