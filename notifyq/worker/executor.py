"""Runs claimed jobs, each in its own cancel scope, and turns what happened into an Outcome.

The path of one job is four named steps: start (register the lease and the slot), run (the handler
under the task's timeout; sync handlers in a worker thread), classify (return value or exception ->
Outcome) and hand off (to the completer, shielded, so a cancelled job still gets its outcome written).
A job is cancelled from outside for one of two reasons, recorded before the cancel: `shutdown` (its
lease is released without spending the attempt) or `lease_lost` (another daemon owns it now, so
nothing is written at all).
"""

from __future__ import annotations

import enum
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
from anyio.abc import TaskGroup

from notifyq import logs
from notifyq.errors import Discard, Retry, Snooze
from notifyq.metrics import Metrics
from notifyq.models import Claim, JobState, Outcome, OutcomeKind
from notifyq.registry import Registry, TaskSpec
from notifyq.worker.completer import Completer
from notifyq.worker.leases import Leases

MAX_ERROR_CHARS = 4000
MAX_RESULT_BYTES = 64 * 1024


class StopReason(enum.Enum):
    SHUTDOWN = "shutdown"
    LEASE_LOST = "lease_lost"


@dataclass(slots=True)
class Running:
    claim: Claim
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    reason: StopReason | None = None


class Executor:
    def __init__(
        self,
        registry: Registry,
        completer: Completer,
        leases: Leases,
        metrics: Metrics,
        capacity: int,
        on_slot_free: Callable[[], None],
    ) -> None:
        self._registry = registry
        self._completer = completer
        self._leases = leases
        self._metrics = metrics
        self._capacity = capacity
        self._on_slot_free = on_slot_free
        self._running: dict[int, Running] = {}
        self._threads = anyio.CapacityLimiter(capacity)
        self._empty = anyio.Event()
        self._empty.set()
        self._log = logs.get("executor")

    @property
    def free(self) -> int:
        return self._capacity - len(self._running)

    @property
    def running_count(self) -> int:
        return len(self._running)

    def is_running(self, job_id: int) -> bool:
        return job_id in self._running

    def start(self, tg: TaskGroup, claim: Claim) -> None:
        """Take a slot and the lease now (so `free` is exact at once), then run in `tg`."""
        job = claim.job
        self._running[job.id] = Running(claim)
        self._leases.add(job.id, claim.lease_token)
        if self._empty.is_set():
            self._empty = anyio.Event()
        self._metrics.jobs_running.labels(self._metrics.queue_label(job.queue)).inc()
        tg.start_soon(self._run, claim, name=f"notifyq job {job.id}")

    def cancel(self, job_id: int, reason: StopReason) -> bool:
        running = self._running.get(job_id)
        if running is None:
            return False
        running.reason = running.reason or reason
        running.scope.cancel()
        return True

    def cancel_all(self, reason: StopReason) -> None:
        for job_id in list(self._running):
            self.cancel(job_id, reason)

    async def wait_empty(self) -> None:
        await self._empty.wait()

    async def _run(self, claim: Claim) -> None:
        job = claim.job
        log = self._log.bind(job_id=job.id, task=job.task, queue=job.queue, attempt=job.attempt)
        spec = self._registry[job.task]
        running = self._running[job.id]
        started = time.monotonic()
        labels = (self._metrics.queue_label(job.queue), self._metrics.task_label(job.task))
        self._metrics.jobs_started.labels(*labels).inc()
        self._metrics.job_wait.labels(*labels).observe(claim.waited)
        log.debug("job_started")
        outcome: Outcome | None = None
        try:
            with running.scope:
                outcome = await self._attempt(spec, claim)
            if outcome is None:
                outcome = self._stopped(claim, running.reason or StopReason.SHUTDOWN)
            elapsed = time.monotonic() - started
            self._metrics.job_duration.labels(*labels).observe(elapsed)
            self._log_outcome(log, outcome, elapsed)
            if outcome.kind is OutcomeKind.LEASE_LOST:
                self._metrics.leases_lost.inc()
                self._metrics.jobs_completed.labels(*labels, outcome.kind.value).inc()
                self._leases.discard(job.id, claim.lease_token)
            else:
                with anyio.CancelScope(shield=True):
                    await self._completer.submit(outcome)
        finally:
            del self._running[job.id]
            self._metrics.jobs_running.labels(labels[0]).dec()
            if not self._running:
                self._empty.set()
            self._on_slot_free()

    async def _attempt(self, spec: TaskSpec, claim: Claim) -> Outcome:
        """Run the handler once and classify what happened."""
        job = claim.job
        try:
            with anyio.move_on_after(spec.timeout) as deadline:
                if spec.is_async:
                    value = await spec.handler(job)
                else:
                    value = await anyio.to_thread.run_sync(
                        spec.handler, job, abandon_on_cancel=True, limiter=self._threads
                    )
            if deadline.cancelled_caught:
                return self._failed(
                    claim,
                    spec,
                    OutcomeKind.TIMED_OUT,
                    f"TimeoutError: timed out after {spec.timeout}s",
                )
            return self._succeeded(claim, value)
        except Snooze as snooze:
            return self._outcome(
                claim,
                OutcomeKind.SNOOZED,
                JobState.QUEUED,
                delay=max(0.0, snooze.seconds),
                refund=1,
            )
        except Discard as discard:
            return self._outcome(
                claim,
                OutcomeKind.DISCARDED,
                JobState.FAILED,
                error=f"Discard: {discard.reason}"[:MAX_ERROR_CHARS],
            )
        except Retry as retry:
            return self._failed(claim, spec, OutcomeKind.RETRIED, f"Retry: {retry.reason}", delay=retry.delay)
        except Exception as exc:
            return self._failed(claim, spec, OutcomeKind.RETRIED, _format_error(exc))

    def _succeeded(self, claim: Claim, value: Any) -> Outcome:
        result: str | None = None
        if value is not None:
            try:
                encoded = orjson.dumps(value)
            except TypeError:
                encoded = b""
            if 0 < len(encoded) <= MAX_RESULT_BYTES:
                result = encoded.decode()
        return self._outcome(claim, OutcomeKind.SUCCEEDED, JobState.SUCCEEDED, result=result)

    def _failed(
        self,
        claim: Claim,
        spec: TaskSpec,
        kind: OutcomeKind,
        error: str,
        delay: float | None = None,
    ) -> Outcome:
        """An attempt that failed: retry after a backoff while attempts remain, else `failed`."""
        job = claim.job
        if job.attempt >= job.max_attempts:
            final = kind if kind is OutcomeKind.TIMED_OUT else OutcomeKind.FAILED
            return self._outcome(claim, final, JobState.FAILED, error=error)
        wait = spec.backoff.delay(job.attempt) if delay is None else max(0.0, delay)
        return self._outcome(claim, kind, JobState.QUEUED, delay=wait, error=error)

    def _stopped(self, claim: Claim, reason: StopReason) -> Outcome:
        if reason is StopReason.LEASE_LOST:
            return self._outcome(claim, OutcomeKind.LEASE_LOST, JobState.RUNNING)
        # Released at shutdown: back to the queue at once, and the attempt is given back.
        return self._outcome(claim, OutcomeKind.RELEASED, JobState.QUEUED, refund=1)

    @staticmethod
    def _outcome(
        claim: Claim,
        kind: OutcomeKind,
        state: JobState,
        *,
        delay: float = 0.0,
        refund: int = 0,
        error: str | None = None,
        result: str | None = None,
    ) -> Outcome:
        return Outcome(
            job_id=claim.job.id,
            lease_token=claim.lease_token,
            kind=kind,
            state=state,
            delay=delay,
            refund=refund,
            error=error,
            result=result,
            queue=claim.job.queue,
            task=claim.job.task,
        )

    @staticmethod
    def _log_outcome(log: Any, outcome: Outcome, elapsed: float) -> None:
        fields = {"outcome": outcome.kind.value, "duration_s": round(elapsed, 6)}
        if outcome.kind in (OutcomeKind.SUCCEEDED, OutcomeKind.SNOOZED, OutcomeKind.RELEASED):
            log.info("job_finished", **fields)
        elif outcome.state is JobState.QUEUED:
            log.warning(
                "job_failed_will_retry",
                retry_in_s=round(outcome.delay, 3),
                error=(outcome.error or "").splitlines()[0],
                **fields,
            )
        elif outcome.kind is OutcomeKind.LEASE_LOST:
            log.warning("lease_lost", **fields)
        else:
            log.error("job_failed", error=(outcome.error or "").splitlines()[0], **fields)


def _format_error(exc: BaseException) -> str:
    """Type, message and the innermost frames: enough to debug, bounded in size."""
    head = f"{type(exc).__name__}: {exc}"
    frames = traceback.format_tb(exc.__traceback__, limit=-5)
    return (head + "\n" + "".join(frames))[:MAX_ERROR_CHARS]
