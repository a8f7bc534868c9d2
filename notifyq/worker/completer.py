"""Writes outcomes in batches: one fenced statement per batch.

Executors hand outcomes over through a bounded stream, so a slow or unreachable database pushes back on
the executors (and through their slots, on claiming) instead of growing memory. Each batch is every
outcome waiting at that moment, up to `batch_max`. A write that fails because the database is away is
retried with backoff for as long as it takes: the write is fenced by the lease token, so writing late
is safe; if another daemon rescued the job meanwhile the statement simply matches no row.
An outcome that matches no row means its lease was lost; it is counted, never retried.
"""

from __future__ import annotations

import anyio

from notifyq import logs
from notifyq.errors import DatabaseUnavailable
from notifyq.metrics import Metrics
from notifyq.models import Outcome, OutcomeKind
from notifyq.retry import Backoff
from notifyq.store import Store
from notifyq.worker.leases import Leases

_RETRY = Backoff(base_seconds=0.1, factor=2.0, cap_seconds=5.0, jitter=0.5)


class Completer:
    def __init__(
        self, store: Store, leases: Leases, metrics: Metrics, buffer: int, batch_max: int = 500
    ) -> None:
        self._store = store
        self._leases = leases
        self._metrics = metrics
        self._batch_max = batch_max
        self._send, self._recv = anyio.create_memory_object_stream[Outcome](max_buffer_size=buffer)
        self._log = logs.get("completer")

    async def submit(self, outcome: Outcome) -> None:
        await self._send.send(outcome)

    def close(self) -> None:
        """No more outcomes: `run` returns once everything sent so far is written."""
        self._send.close()

    def dispose(self) -> None:
        """Close both ends; outcomes not yet written are dropped (their leases will expire)."""
        self._send.close()
        self._recv.close()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with self._recv:
            async for first in self._recv:
                batch = [first]
                while len(batch) < self._batch_max:
                    try:
                        batch.append(self._recv.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                with anyio.CancelScope(shield=True):
                    await self._write(batch)

    async def _write(self, batch: list[Outcome]) -> None:
        attempt = 0
        while True:
            try:
                written = await self._store.record(batch)
                break
            except DatabaseUnavailable as exc:
                attempt += 1
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
        for outcome in batch:
            self._leases.discard(outcome.job_id, outcome.lease_token)
            labels = (
                self._metrics.queue_label(outcome.queue),
                self._metrics.task_label(outcome.task),
            )
            if outcome.job_id in written:
                self._metrics.jobs_completed.labels(*labels, _metric_outcome(outcome)).inc()
            else:
                self._metrics.leases_lost.inc()
                self._metrics.jobs_completed.labels(*labels, OutcomeKind.LEASE_LOST.value).inc()
                self._log.warning(
                    "outcome_dropped_lease_lost",
                    job_id=outcome.job_id,
                    task=outcome.task,
                    queue=outcome.queue,
                    outcome=outcome.kind.value,
                )


# Snoozes put the job back like a retry that costs no attempt; a shutdown release cancelled the handler.
_METRIC_OUTCOME = {OutcomeKind.SNOOZED: "retried", OutcomeKind.RELEASED: "cancelled"}


def _metric_outcome(outcome: Outcome) -> str:
    return _METRIC_OUTCOME.get(outcome.kind, outcome.kind.value)
