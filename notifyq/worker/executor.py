"""Runs claimed jobs, each in its own cancel scope, and turns what happened into an Outcome.

The path of one job is four named steps: start (take the slot and the lease), run (the handler under
the task's timeout; sync handlers in a worker thread), classify (worker/outcomes.py) and hand off (to the
completer, shielded, so a cancelled job still gets its outcome written).

A job is cancelled from outside for one of two reasons, recorded before the cancel: `shutdown` (its lease
is released without spending the attempt) or `lease_lost` (another daemon owns it now, so nothing is
written). Running jobs are keyed by (id, lease token): a job can come back to this daemon under a new
lease while a stale run of it is still winding down, and the two must never be confused.

Sync handlers cannot be interrupted (Python cannot stop a thread), so their slot stays taken until the
thread returns: a timed-out or cancelled sync handler is reported only once it has really stopped, and
the number of threads never exceeds the concurrency.
"""

from __future__ import annotations

import enum
import inspect
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from notifyq import logs
from notifyq.errors import Discard, Retry, Snooze
from notifyq.metrics import Metrics
from notifyq.models import Claim, JobState, Outcome, OutcomeKind
from notifyq.registry import Registry, TaskSpec
from notifyq.worker import outcomes
from notifyq.worker.completer import Completer
from notifyq.worker.leases import Leases

Key = tuple[int, uuid.UUID]


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
        self._running: dict[Key, Running] = {}
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

    def is_running(self, job_id: int, token: uuid.UUID) -> bool:
        return (job_id, token) in self._running

    def start(self, tg: TaskGroup, claim: Claim, claimed_at: float) -> None:
        """Take a slot and the lease now (so `free` is exact at once), then run in `tg`."""
        job = claim.job
        running = Running(claim)
        self._running[(job.id, claim.lease_token)] = running
        self._leases.add(job.id, claim.lease_token, claimed_at)
        if self._empty.is_set():
            self._empty = anyio.Event()
        self._metrics.jobs_running.labels(self._metrics.queue_label(job.queue)).inc()
        tg.start_soon(self._run, running, name=f"notifyq job {job.id}")

    def cancel(self, job_id: int, token: uuid.UUID, reason: StopReason) -> bool:
        running = self._running.get((job_id, token))
        if running is None:
            return False
        running.reason = running.reason or reason
        running.scope.cancel()
        return True

    def cancel_all(self, reason: StopReason) -> None:
        for job_id, token in list(self._running):
            self.cancel(job_id, token, reason)

    async def wait_empty(self) -> None:
        await self._empty.wait()

    async def _run(self, running: Running) -> None:
        claim = running.claim
        job = claim.job
        log = self._log.bind(job_id=job.id, task=job.task, queue=job.queue, attempt=job.attempt)
        labels = (self._metrics.queue_label(job.queue), self._metrics.task_label(job.task))
        self._metrics.jobs_started.labels(*labels).inc()
        self._metrics.job_wait.labels(*labels).observe(claim.waited)
        log.debug("job_started")
        started = time.monotonic()
        try:
            outcome: Outcome | None = None
            with running.scope:
                outcome = await self._attempt(running)
            if outcome is None:
                outcome = self._stopped(claim, running.reason or StopReason.SHUTDOWN)
            elapsed = time.monotonic() - started
            self._metrics.job_duration.labels(*labels).observe(elapsed)
            _log_outcome(log, outcome, elapsed)
            if outcome.kind is OutcomeKind.LEASE_LOST:
                self._metrics.leases_lost.inc()
                self._metrics.jobs_completed.labels(*labels, outcome.kind.value).inc()
                self._leases.discard(job.id, claim.lease_token)
            else:
                with anyio.CancelScope(shield=True):
                    await self._completer.submit(outcome)
        finally:
            del self._running[(job.id, claim.lease_token)]
            self._metrics.jobs_running.labels(labels[0]).dec()
            if not self._running:
                self._empty.set()
            self._on_slot_free()

    async def _attempt(self, running: Running) -> Outcome:
        """Run the handler once and classify what happened."""
        claim = running.claim
        if claim.decode_error is not None:
            return outcomes.discarded(claim, f"payload cannot be decoded: {claim.decode_error}")
        spec = self._registry[claim.job.task]
        try:
            with anyio.move_on_after(spec.timeout) as deadline:
                value = await self._call(spec, claim)
            # A sync handler's thread cannot be cancelled: it returns normally, late. Late is timed out.
            if deadline.cancelled_caught or deadline.cancel_called:
                error = f"TimeoutError: timed out after {spec.timeout}s"
                return outcomes.failed(claim, spec, OutcomeKind.TIMED_OUT, error)
            return outcomes.succeeded(claim, value)
        except Snooze as snooze:
            return outcomes.snoozed(claim, snooze.seconds)
        except Discard as discard:
            return outcomes.discarded(claim, discard.reason)
        except Retry as retry:
            return outcomes.failed(claim, spec, OutcomeKind.RETRIED, f"Retry: {retry.reason}", retry.delay)
        except anyio.get_cancelled_exc_class() as exc:
            if running.scope.cancel_called:
                raise  # ours: shutdown or lease lost, handled by the caller
            # Either an enclosing scope is cancelling (the daemon is going down: the checkpoint below
            # re-raises) or the handler raised CancelledError itself, which is just a failure.
            await anyio.lowlevel.checkpoint()
            return outcomes.failed(claim, spec, OutcomeKind.RETRIED, outcomes.format_error(exc))
        except BaseException as exc:  # SystemExit from a sync handler, too: a failed job, not a dead daemon
            return outcomes.failed(claim, spec, OutcomeKind.RETRIED, outcomes.format_error(exc))

    async def _call(self, spec: TaskSpec, claim: Claim) -> Any:
        if spec.is_async:
            return await spec.handler(claim.job)
        value = await anyio.to_thread.run_sync(spec.handler, claim.job, limiter=self._threads)
        if inspect.isawaitable(value):  # a callable object whose __call__ is async
            value = await value
        return value

    @staticmethod
    def _stopped(claim: Claim, reason: StopReason) -> Outcome:
        if reason is StopReason.LEASE_LOST:
            return outcomes.lease_lost(claim)
        return outcomes.released(claim)


def _log_outcome(log: Any, outcome: Outcome, elapsed: float) -> None:
    fields = {"outcome": outcome.kind.value, "duration_s": round(elapsed, 6)}
    first_line = (outcome.error or "").splitlines()[0] if outcome.error else ""
    if outcome.kind in (OutcomeKind.SUCCEEDED, OutcomeKind.SNOOZED, OutcomeKind.RELEASED):
        log.debug("job_finished", **fields)  # one line per job costs more than a no-op job itself
    elif outcome.state is JobState.QUEUED:
        log.warning("job_failed_will_retry", retry_in_s=round(outcome.delay, 3), error=first_line, **fields)
    elif outcome.kind is OutcomeKind.LEASE_LOST:
        log.warning("lease_lost", **fields)
    else:
        log.error("job_failed", error=first_line, **fields)
