"""`notifyq check`: connectivity, schema, LISTEN round trip, and queued work that no handler takes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import anyio

from notifyq import cron, migrate, queries
from notifyq.config import Settings
from notifyq.errors import DatabaseConfigError, DatabaseUnavailable, NotifyqError
from notifyq.registry import load_app
from notifyq.stats import handled_by, summarize
from notifyq.store import Store, connect, safe_dsn


async def run_checks(settings: Settings, echo: Callable[[str], Any]) -> bool:
    """Print one line per check; True when nothing is wrong (warnings do not fail)."""
    store = await Store.open(settings.dsn, max_size=2, statement_cache_size=settings.statement_cache_size)
    ok = True
    try:
        try:
            async with store.connection() as conn:
                problem = (await migrate.status(conn)).problem()
        except (DatabaseUnavailable, DatabaseConfigError) as exc:
            echo(f"FAIL  database: cannot connect to {safe_dsn(settings.dsn)}: {exc}")
            return False
        echo(f"ok    database: connected to {safe_dsn(settings.dsn)}")
        if problem:
            echo(f"FAIL  schema: {problem}")
            return False
        echo("ok    schema: current")
        ok = await _check_listen(settings, echo) and ok
        await _check_handlers(settings, store, echo)
        ok = await _check_schedules(store, echo) and ok
    finally:
        await store.close()
    return ok


async def _check_listen(settings: Settings, echo: Callable[[str], Any] = print) -> bool:
    channel = f"notifyq.check.{uuid.uuid4().hex}"
    got = anyio.Event()
    try:
        conn = await connect(settings.effective_listen_dsn)
    except NotifyqError as exc:
        echo(f"FAIL  listen: cannot connect: {exc}")
        return False
    try:
        await conn.add_listener(channel, lambda *_: got.set())
        await conn.execute(queries.get("probe"), channel)
        with anyio.move_on_after(5):
            await got.wait()
    finally:
        await conn.close()
    if not got.is_set():
        echo("FAIL  listen: a NOTIFY did not come back within 5 s (is listen_dsn a transaction pooler?)")
        return False
    echo("ok    listen: NOTIFY round trip works")
    return True


async def _check_handlers(settings: Settings, store: Store, echo: Callable[[str], Any]) -> None:
    """Warn about queued jobs that no handler will ever claim."""
    workers = await store.live_workers()
    if settings.app:
        handled = {(q, t) for q in settings.queues for t in load_app(settings.app).names}
        source = f"app {settings.app} on queues {','.join(settings.queues)}"
    else:
        handled = handled_by(workers)
        source = f"{len(workers)} live worker(s)"
    echo(f"ok    workers: {len(workers)} live")
    overview = summarize((await store.queue_stats()).stats, workers, handled)
    for (queue, task), jobs in sorted(overview.orphans.items()):
        echo(
            f"WARN  handlers: {jobs} queued job(s) of task {task!r} in queue {queue!r}, "
            f"which no handler takes ({source}); they stay queued"
        )
    if not overview.orphans:
        echo(f"ok    handlers: every queued job has a handler ({source})")


async def _check_schedules(store: Store, echo: Callable[[str], Any]) -> bool:
    """Fail on an enabled schedule whose rule the parser refuses (reported by the daemons on its row,
    or found here before any daemon looked)."""
    ok = True
    rows = [s for s in await store.list_schedules() if s.enabled]
    for s in rows:
        error = s.error
        if error is None:
            try:
                cron.parse(s.cron, s.timezone)
            except cron.CronError as exc:
                error = str(exc)
        if error is not None:
            ok = False
            echo(f"FAIL  schedules: {s.name!r} ({s.cron!r} in {s.timezone}) cannot run: {error}")
    if ok:
        echo(f"ok    schedules: {len(rows)} enabled, every rule understood")
    return ok
