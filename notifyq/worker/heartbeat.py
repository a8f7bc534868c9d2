"""Extends every lease this daemon holds, three times per lease, in one statement.

The statement returns the ids whose lease is still ours. A running handler whose (id, token) is missing
lost its lease (rescued after this process froze, or retried by an admin): it is cancelled and counted,
and writes nothing. The daemon also fences itself: a lease the database has not confirmed for a whole
lease length is treated as lost, whether the heartbeat failed, timed out or is stuck waiting, since
another daemon may already be running that job. Ids go to the database sorted, like the completer's, so
the two statements lock rows in the same order and cannot deadlock.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime

import anyio

from notifyq import logs
from notifyq.errors import DatabaseUnavailable, QueryError
from notifyq.models import WorkerInfo
from notifyq.store import Store
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
        entered_through: Callable[[], datetime | None] = lambda: None,
    ) -> None:
        self._store = store
        self._entered_through = entered_through  # the starter's mark, written with each beat
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
        held = dict(sorted(self._leases.snapshot().items()))
        started = time.monotonic()
        alive: set[int] | None = None
        busy: set[int] = set()
        try:
            # A beat that cannot finish within its interval is as good as failed.
            with anyio.move_on_after(self._interval) as deadline:
                alive, busy = await self._store.extend(
                    held, self._lease_seconds, self._worker, self._entered_through()
                )
            if deadline.cancelled_caught:
                self._failed(f"no answer within {self._interval:.1f}s", len(held))
        except (DatabaseUnavailable, QueryError) as exc:
            self._failed(str(exc), len(held))
        if alive is not None:
            if self._failures:
                self._log.info("heartbeat_recovered", failures=self._failures)
                self._failures = 0
            self._leases.confirm(alive, started, held)
            # A busy lease (its row locked by another session) is neither extended nor lost: if the lock
            # outlasts most of a lease, the check below fences that one job.
            for job_id in held.keys() - alive - busy:
                # Only a run still going under that very token is cancelled: an outcome already handed
                # to the completer is fenced there, and may simply have been written before this ran.
                self._lost(job_id, held[job_id], "not held in the database")
        # Fence one beat early: a lease that this beat could not confirm may be gone before the next.
        for job_id, token in self._leases.expired(self._lease_seconds - self._interval):
            self._lost(job_id, token, "unconfirmed for most of a lease")

    def _failed(self, error: str, leases: int) -> None:
        self._failures += 1
        if self._failures == 1 or self._failures % 10 == 0:
            self._log.warning("heartbeat_failed", error=error, leases=leases, failures=self._failures)

    def _lost(self, job_id: int, token: uuid.UUID, why: str) -> None:
        if self._executor.cancel(job_id, token, StopReason.LEASE_LOST):
            self._log.warning("lease_lost_cancelling", job_id=job_id, reason=why)
