"""Extends every lease this daemon holds, three times per lease, in one statement.

The statement returns the ids whose lease is still ours. A running handler whose id is missing lost
its lease (rescued after this process froze, or retried by an admin): it is cancelled and counted, and
writes nothing. When the database cannot be reached, leases the database has not confirmed for a whole
lease length are treated as lost too, since another daemon may already be running those jobs.
"""

from __future__ import annotations

import time

import anyio

from notifyq import logs
from notifyq.errors import DatabaseUnavailable
from notifyq.store import Store, WorkerInfo
from notifyq.worker.executor import Executor, StopReason
from notifyq.worker.leases import Leases


class Heartbeat:
    def __init__(
        self,
        store: Store,
        leases: Leases,
        executor: Executor,
        worker: WorkerInfo,
        lease_seconds: float,
        interval: float,
    ) -> None:
        self._store = store
        self._leases = leases
        self._executor = executor
        self._worker = worker
        self._lease_seconds = lease_seconds
        self._interval = interval
        self._log = logs.get("heartbeat")
        self._failures = 0

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await anyio.sleep(self._interval)
            await self.beat()

    async def beat(self) -> None:
        held = self._leases.snapshot()
        started = time.monotonic()
        try:
            alive = await self._store.extend(held, self._lease_seconds, self._worker)
        except DatabaseUnavailable as exc:
            self._failures += 1
            if self._failures == 1 or self._failures % 10 == 0:
                self._log.warning(
                    "heartbeat_failed", error=str(exc), leases=len(held), failures=self._failures
                )
            for job_id in self._leases.expired(self._lease_seconds):
                self._lost(job_id, "unconfirmed for a whole lease")
            return
        if self._failures:
            self._log.info("heartbeat_recovered", failures=self._failures)
            self._failures = 0
        self._leases.confirm(alive, started, held)
        for job_id in held.keys() - alive:
            # Only a handler still running is cancelled here; an outcome already handed to the
            # completer is fenced there, and may simply have been written before this statement ran.
            if self._executor.is_running(job_id):
                self._lost(job_id, "not held in the database")

    def _lost(self, job_id: int, why: str) -> None:
        if self._executor.cancel(job_id, StopReason.LEASE_LOST):
            self._log.warning("lease_lost_cancelling", job_id=job_id, reason=why)
