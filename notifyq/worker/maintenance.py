"""Periodic upkeep, safe with any number of daemons running at once (SKIP LOCKED, idempotent deletes).

- rescue: every half lease, jobs whose lease expired go back to the queue (or to `failed` once their
  attempts are spent), so a crashed daemon's jobs run again within about two leases; a started job
  not known to have run is forgiven once (sql/queries/worker.sql, rescue_expired). Leases this daemon
  still holds are left to its heartbeat;
- jobs without a handler in the served queues are reported once a minute (they stay queued);
- finished jobs older than the retention are deleted in bounded batches; silent workers are forgotten.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

import anyio

from notifyq import logs
from notifyq.errors import DatabaseUnavailable, QueryError
from notifyq.store import Store

ORPHAN_REPORT_SECONDS = 60.0
PRUNE_SECONDS = 300.0
PRUNE_BATCH = 1000
PRUNE_BATCHES_PER_TICK = 10


class Maintenance:
    def __init__(
        self,
        store: Store,
        queues: Sequence[str],
        tasks: Sequence[str],
        lease_seconds: float,
        retention_seconds: float,
        on_rescued: Callable[[], None],
        held: Callable[[], dict[int, uuid.UUID]] = dict,
    ) -> None:
        self._store = store
        self._held = held  # leases this daemon holds: its heartbeat extends or fences them, rescue not
        self._queues = list(queues)
        self._tasks = list(tasks)
        self._lease_seconds = lease_seconds
        self._retention = retention_seconds
        self._on_rescued = on_rescued
        self._log = logs.get("maintenance")

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        rescue_every = self._lease_seconds / 2
        # A short retention is pruned as often as it is long, so rows never outstay it by five minutes.
        prune_every = min(PRUNE_SECONDS, max(self._retention, 1.0))
        now = anyio.current_time()
        due = {"rescue": now, "orphans": now, "prune": now + rescue_every}
        while True:
            now = anyio.current_time()
            try:
                if now >= due["rescue"]:
                    due["rescue"] = now + rescue_every
                    await self.rescue()
                if now >= due["orphans"]:
                    due["orphans"] = now + ORPHAN_REPORT_SECONDS
                    await self.report_orphans()
                if now >= due["prune"]:
                    due["prune"] = now + prune_every
                    await self.prune()
            except (DatabaseUnavailable, QueryError) as exc:
                self._log.warning("maintenance_failed", error=str(exc))
            await anyio.sleep(max(0.0, min(due.values()) - anyio.current_time()))

    async def rescue(self) -> int:
        rows = await self._store.rescue_expired(held=self._held())
        for row in rows:
            self._log.warning(
                "job_rescued",
                job_id=row.id,
                task=row.task,
                queue=row.queue,
                attempt=row.attempts,
                state=row.state,
                started=row.started,
                forgiven=row.forgiven,
            )
        if rows:
            self._on_rescued()
        return len(rows)

    async def report_orphans(self) -> None:
        for row in await self._store.jobs_without_handler(self._queues, self._tasks):
            self._log.warning("jobs_without_handler", queue=row.queue, task=row.task, jobs=row.jobs)

    async def prune(self) -> None:
        # At most PRUNE_BATCHES_PER_TICK batches, so a large first prune never holds up rescue.
        total = 0
        for _ in range(PRUNE_BATCHES_PER_TICK):
            deleted = await self._store.prune_finished(self._retention, PRUNE_BATCH)
            total += deleted
            if deleted < PRUNE_BATCH:
                break
        await self._store.prune_workers(300.0)
        if total:
            self._log.info("jobs_pruned", jobs=total)
