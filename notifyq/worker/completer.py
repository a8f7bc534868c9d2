"""Writes outcomes in batches: one fenced statement per batch.

Runners hand outcomes over with `put()`, which never waits; before taking the next job a runner waits
for room, so a slow or unreachable database pushes back on the runners (and through them, on claiming)
instead of growing memory. Each batch is every
outcome waiting at that moment, up to `batch_max`, sorted by job id (the heartbeat sorts the same way,
so the two never deadlock on row locks).

A write that fails because the database is away is retried with backoff: the write is fenced by the lease
token, so writing late is safe; if another daemon rescued the job meanwhile the statement simply matches
no row, which is counted as a lost lease. A write the database refuses for another reason is split into
single rows, and a row refused on its own is written once more as a bare `failed` (or, for a success, a
success without its result); one bad outcome never takes the batch or the daemon down. After `close()`,
retries stop at the flush deadline: what is still unwritten then is left to lease expiry and rescue.

A row another session holds locked (an operator's open transaction, a report's SELECT ... FOR UPDATE) is
skipped by the statement, not waited for: waiting would stall every outcome of the batch, and the
heartbeat with it, until the leases expired and rescue ran those jobs again. Its outcome is written
again after BUSY_RETRY_SECONDS, for as long as its lease lasts.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable

import anyio

from notifyq import logs
from notifyq.errors import DatabaseUnavailable, QueryError
from notifyq.metrics import Metrics
from notifyq.models import JobState, Outcome, OutcomeKind
from notifyq.retry import Backoff
from notifyq.store import Store
from notifyq.worker.leases import Leases

_RETRY = Backoff(base_seconds=0.1, factor=2.0, cap_seconds=5.0, jitter=0.5)
# How soon an outcome whose row was locked by another session is tried again.
BUSY_RETRY_SECONDS = 0.5


class Completer:
    def __init__(
        self,
        store: Store,
        leases: Leases,
        metrics: Metrics,
        buffer: int,
        batch_max: int = 500,
        on_settled: Callable[[Outcome], None] = lambda outcome: None,
    ) -> None:
        self._store = store
        self._on_settled = on_settled  # an outcome written, or its lease found lost: never written
        self._retried = False  # the last write needed more than one try
        self._leases = leases
        self._metrics = metrics
        self._buffer = buffer
        self._batch_max = batch_max
        self._queue: deque[Outcome] = deque()
        self._busy: list[Outcome] = []  # skipped for a lock held elsewhere, written again at `_busy_at`
        self._busy_at = math.inf
        self._ready = anyio.Event()
        self._room = anyio.Event()
        self._room.set()
        self._closed = False
        self._disposed = False
        self._deadline = math.inf
        self._pending: anyio.CancelScope | None = None
        self._log = logs.get("completer")

    def put(self, outcome: Outcome) -> None:
        """Queue an outcome for writing. Never waits, so a cancelled job still gets its outcome queued;
        callers wait for `wait_room()` before taking on more work."""
        if self._disposed:
            return  # left to lease expiry and rescue
        self._queue.append(outcome)
        if len(self._queue) >= self._buffer and self._room.is_set():
            self._room = anyio.Event()
        self._ready.set()

    async def wait_room(self) -> None:
        """Return once fewer than `buffer` outcomes wait: a slow database pushes back on the runners."""
        if not self._room.is_set():
            await self._room.wait()

    def close(self, flush_seconds: float) -> None:
        """No more outcomes: `run` returns once everything queued is written, or at the flush deadline."""
        self._deadline = anyio.current_time() + flush_seconds
        if self._pending is not None:
            self._pending.deadline = self._deadline
        self._closed = True
        self._ready.set()

    def dispose(self) -> None:
        """Outcomes not yet written are dropped (their leases will expire)."""
        self._closed = self._disposed = True
        self._queue.clear()
        self._room.set()
        self._ready.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if self._busy and anyio.current_time() >= self._busy_at:
                self._queue.extend(self._busy)
                self._busy, self._busy_at = [], math.inf
            if not self._queue:
                if self._closed and not self._busy:
                    return
                with anyio.move_on_after(max(self._busy_at - anyio.current_time(), 0)):
                    await self._ready.wait()
                    self._ready = anyio.Event()
                continue
            take = min(len(self._queue), self._batch_max)
            batch = [self._queue.popleft() for _ in range(take)]
            if len(self._queue) < self._buffer:
                self._room.set()
            batch.sort(key=lambda o: o.job_id)
            with anyio.CancelScope(shield=True):
                await self._write(batch)

    async def _write(self, batch: list[Outcome]) -> None:
        busy: set[int] = set()
        try:
            result = await self._record(batch)
        except QueryError as exc:
            if len(batch) > 1:
                for outcome in batch:
                    await self._write([outcome])
                return
            result = await self._write_bare(batch[0], str(exc))
        if result is None:
            self._log.error("outcomes_unwritten", jobs=len(batch), note="left to lease expiry and rescue")
            written: set[int] = set()
        else:
            written, busy = result
        if busy:
            self._hold_busy([o for o in batch if o.job_id in busy])
        self._account([o for o in batch if o.job_id not in busy], written)

    def _hold_busy(self, outcomes: list[Outcome]) -> None:
        if self._closed:  # at shutdown, a locked row's outcome is left to lease expiry and rescue
            return
        if not self._busy:
            self._log.warning(
                "outcome_row_locked",
                jobs=[o.job_id for o in outcomes][:10],
                note="another session holds these rows locked; writing them again shortly",
            )
        self._busy.extend(outcomes)
        self._busy_at = min(self._busy_at, anyio.current_time() + BUSY_RETRY_SECONDS)
        self._ready.set()

    async def _record(self, batch: list[Outcome]) -> tuple[set[int], set[int]] | None:
        """Write with retries while the database is unavailable; None once the flush deadline passed.

        The write and the waits between tries run in one cancel scope whose deadline `close()` sets, so
        a statement already stuck on a hung connection is cut at the flush deadline too."""
        attempt = 0
        self._retried = False
        with anyio.CancelScope(deadline=self._deadline) as scope:
            self._pending = scope
            try:
                while True:
                    try:
                        return await self._store.record(batch)
                    except DatabaseUnavailable as exc:
                        attempt += 1
                        self._retried = True
                        delay = _RETRY.delay(attempt)
                        if attempt == 1 or attempt % 10 == 0:
                            self._log.warning(
                                "outcomes_write_failed",
                                error=str(exc),
                                jobs=len(batch),
                                retry_in_s=round(delay, 3),
                                attempt=attempt,
                            )
                        await anyio.sleep(delay)
            finally:
                self._pending = None
        return None  # the flush deadline passed

    async def _write_bare(self, outcome: Outcome, error: str) -> tuple[set[int], set[int]] | None:
        """The database refused this outcome itself: keep the state, drop what it objected to."""
        self._log.error(
            "outcome_refused", job_id=outcome.job_id, task=outcome.task, queue=outcome.queue, error=error
        )
        if outcome.state is JobState.SUCCEEDED:
            bare = dataclasses.replace(outcome, result=None)
        else:
            bare = dataclasses.replace(
                outcome,
                state=JobState.FAILED,
                kind=OutcomeKind.FAILED,
                refund=0,
                delay=0.0,
                result=None,
                error=f"notifyq could not record the outcome: {error}"[:500],
            )
        try:
            return await self._record([bare])
        except QueryError as exc:
            self._log.error("outcome_unwritable", job_id=outcome.job_id, error=str(exc))
            return set(), set()

    def _account(self, batch: list[Outcome], written: set[int]) -> None:
        for outcome in batch:
            self._leases.discard(outcome.job_id, outcome.lease_token)
            self._on_settled(outcome)
            completed = self._metrics.for_job(outcome.queue, outcome.task).completed
            if outcome.kind is OutcomeKind.UNSTARTED and outcome.job_id in written:
                continue  # never started, so never completed either
            if outcome.job_id in written:
                completed[outcome.kind.value] += 1
            else:
                self._metrics.leases_lost.inc()
                completed[OutcomeKind.LEASE_LOST.value] += 1
                self._log.warning(
                    "outcome_dropped_lease_lost",
                    job_id=outcome.job_id,
                    task=outcome.task,
                    queue=outcome.queue,
                    outcome=outcome.kind.value,
                    # A try whose connection broke may have committed: the retry then finds nothing.
                    **({"note": "or an earlier try whose answer was lost wrote it"} if self._retried else {}),
                )
