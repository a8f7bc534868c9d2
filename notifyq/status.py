"""`notifyq status`: queues and live workers, as a table or as JSON."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from notifyq import migrate
from notifyq.config import Settings
from notifyq.stats import Overview, summarize
from notifyq.store import Store, presentable


async def gather(settings: Settings) -> Overview:
    store = await Store.open(settings.dsn, max_size=1, statement_cache_size=settings.statement_cache_size)
    try:
        async with store.connection() as conn:
            await migrate.ensure_current(conn)
        rows = (await store.queue_stats()).stats
        workers = await store.live_workers()
        schedules = await store.list_schedules()
    finally:
        await store.close()
    overview = summarize(rows, workers)
    overview.schedules = schedules
    return overview


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    ]
    for row in rows:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


def render(overview: Overview) -> str:
    queue_rows = [
        [
            q.queue,
            str(q.counts["queued"]),
            str(q.counts["scheduled"]),
            str(q.counts["running"]),
            str(q.counts["failed"]),
            _age(q.oldest_age) if q.counts["queued"] else "-",
        ]
        for q in overview.queues.values()
    ]
    out = [_table(["QUEUE", "QUEUED", "SCHEDULED", "RUNNING", "FAILED", "OLDEST"], queue_rows)]
    if not queue_rows:
        out.append("(no jobs)")
    worker_rows = [
        [
            w.hostname,
            str(w.pid),
            ",".join(w.queues),
            f"{w.running}/{w.concurrency}",
            _age(w.seen_seconds_ago) + " ago",
        ]
        for w in overview.workers
    ]
    out += ["", _table(["HOST", "PID", "QUEUES", "RUNNING", "LAST SEEN"], worker_rows)]
    if not worker_rows:
        out.append("(no live workers)")
    schedule_rows = [
        [
            s.name,
            s.cron + ("" if s.timezone == "UTC" else f" ({s.timezone})"),
            s.next_tick.strftime("%Y-%m-%d %H:%M:%S%z") if s.next_tick and s.enabled else "-",
            s.last_job_state or "-",
        ]
        for s in overview.schedules
    ]
    if schedule_rows:
        out += ["", _table(["SCHEDULE", "CRON", "NEXT RUN", "LAST RUN"], schedule_rows)]
    for (queue, task), jobs in sorted(overview.orphans.items()):
        out.append(f"warning: {jobs} queued job(s) of task {task!r} in queue {queue!r} have no live handler")
    for s in overview.schedules:
        if s.enabled and s.error:
            out.append(f"warning: schedule {s.name!r} cannot run: {s.error}")
    return "\n".join(out)


def to_json(overview: Overview) -> str:
    doc: dict[str, Any] = {
        "queues": [
            {"queue": q.queue, **q.counts, "oldest_age_seconds": round(q.oldest_age, 3)}
            for q in overview.queues.values()
        ],
        "workers": [
            {
                "id": str(w.id),
                "hostname": w.hostname,
                "pid": w.pid,
                "queues": list(w.queues),
                "tasks": list(w.tasks),
                "running": w.running,
                "concurrency": w.concurrency,
                "started_at": w.started_at.isoformat(),
                "last_seen_seconds_ago": round(w.seen_seconds_ago, 3),
            }
            for w in overview.workers
        ],
        "schedules": [
            {
                "name": s.name,
                "cron": s.cron,
                "timezone": s.timezone,
                "task": s.task,
                "enabled": s.enabled,
                "next_tick": s.next_tick.isoformat() if s.next_tick else None,
                "last_tick": s.last_tick.isoformat() if s.last_tick else None,
                "last_job_state": s.last_job_state,
                "error": s.error,
            }
            for s in overview.schedules
        ],
        "jobs_without_handler": [
            {"queue": queue, "task": task, "jobs": jobs}
            for (queue, task), jobs in sorted(overview.orphans.items())
        ],
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()


async def job_rows(
    settings: Settings, state: str | None, queue: str | None, task: str | None, limit: int, as_json: bool
) -> str:
    store = await Store.open(settings.dsn, max_size=1, statement_cache_size=settings.statement_cache_size)
    try:
        rows = await store.list_jobs(state, queue, task, limit)
    finally:
        await store.close()
    if as_json:
        return "\n".join(orjson.dumps(dataclasses.asdict(r), default=str).decode() for r in rows)
    table = [
        [
            str(r.id),
            r.queue,
            r.task,
            r.state,
            # "-": the producer gave no max_attempts; the task's, else the default, applies at its claim.
            f"{r.attempts}/{'-' if r.max_attempts is None else r.max_attempts}",
            r.run_at.strftime("%Y-%m-%d %H:%M:%S"),
            r.error or "",
        ]
        for r in rows
    ]
    return (
        _table(["ID", "QUEUE", "TASK", "STATE", "ATTEMPTS", "RUN_AT", "ERROR"], table)
        if table
        else "(no jobs)"
    )


async def job_detail(settings: Settings, job_id: int) -> str | None:
    store = await Store.open(settings.dsn, max_size=1, statement_cache_size=settings.statement_cache_size)
    try:
        row = await store.show_job(job_id)
    finally:
        await store.close()
    if row is None:
        return None
    return document(dataclasses.asdict(row), ("payload", "result"), indent=True)


def document(row: dict[str, Any], stored: tuple[str, ...], *, indent: bool = False) -> str:
    """A row as JSON for the CLI, its `stored` columns (JSON text from jsonb) as JSON values, or as the
    text they are stored as when they cannot be (store.presentable)."""
    option = orjson.OPT_INDENT_2 if indent else 0
    doc = dict(row)
    for key in stored:
        if doc[key] is not None:
            value, text = presentable(doc[key])
            doc[key] = value if text is None else text
    try:
        return orjson.dumps(doc, default=str, option=option).decode()
    except orjson.JSONEncodeError:  # an integer past 64 bits, which orjson does not write
        return orjson.dumps(row, default=str, option=option).decode()
