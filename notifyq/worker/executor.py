"""Runs claimed jobs on `capacity` long-lived runner tasks, and turns what happened into an Outcome.

Runners take jobs from the prefetch buffer (worker/prefetch.py), so a runner that finishes a job
starts the next without waiting for the database. Runners live as long as the daemon: starting a task
per job cost more than a no-op job itself (anyio's `start_soon` measured about 50 us).

The path of one job is four named steps: start (take the next claim and a cancel scope, with the task's
timeout as its deadline), run (the handler; sync handlers in a worker thread), classify
(worker/outcomes.py) and hand off (to the completer, without awaiting, so a cancelled job still gets its
outcome queued; the runner waits for room in the completer before it takes the next job).

A job is cancelled from outside for one of two reasons, recorded before the cancel: `shutdown` (its lease
is released without spending the attempt) or `lease_lost` (another daemon owns it now, so nothing is
written). Jobs are keyed by (id, lease token): a job can come back to this daemon under a new lease while
a stale run of it is still winding down, and the two must never be confused. A buffered job whose lease
is lost is dropped; buffered jobs given back (shutdown, jobs turned slow) go back to the queue unstarted.

Sync handlers cannot be interrupted (Python cannot stop a thread), so their runner stays taken until the
thread returns: a timed-out or cancelled sync handler is reported only once it has really stopped, and
the number of threads never exceeds the concurrency.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel

from notifyq import logs
from notifyq.context import Context
from notifyq.errors import Discard, Retry, Snooze
from notifyq.metrics import JobSeries, Metrics
from notifyq.models import Claim, JobState, Outcome, OutcomeKind
from notifyq.registry import Registry, TaskSpec
from notifyq.worker import outcomes
from notifyq.worker.completer import Completer
from notifyq.worker.leases import Leases
from notifyq.worker.prefetch import Prefetch

Key = tuple[int, uuid.UUID]


class StopReason(enum.Enum):
    SHUTDOWN = "shutdown"
    LEASE_LOST = "lease_lost"


@dataclass(slots=True)
class Running:
    claim: Claim
    scope: anyio.CancelScope  # the runner's, shared with its earlier jobs until one is cancelled
    spec: TaskSpec | None
    series: JobSeries
    started: float
    reason: StopReason | None = None


class Executor:
    def __init__(
        self,
        registry: Registry,
        prefetch: Prefetch,
        completer: Completer,
        leases: Leases,
        metrics: Metrics,
        capacity: int,
        on_slot_free: Callable[[], None],
    ) -> None:
        self._registry = registry
        self._prefetch = prefetch
        self._completer = completer
        self._leases = leases
        self._metrics = metrics
        self._capacity = capacity
        self.finished = 0  # jobs finished since start: their rate sizes the prefetch buffer
        self._on_slot_free = on_slot_free
        self._running: dict[Key, Running] = {}
        self._threads = anyio.CapacityLimiter(capacity)
        self._empty: anyio.Event | None = None  # set when the last running job finishes
        self._log = logs.get("executor")
        self._debug = logs.enabled("debug")

    @property
    def free(self) -> int:
        """Runners with no job."""
        return self._capacity - len(self._running)

    @property
    def running_count(self) -> int:
        return len(self._running)

    def cancel(self, job_id: int, token: uuid.UUID, reason: StopReason) -> bool:
        """Cancel the run (or drop the buffered job) holding this lease; False if there is none."""
        running = self._running.get((job_id, token))
        if running is not None:
            running.reason = running.reason or reason
            running.scope.cancel()
            return True
        claim = self._prefetch.remove(job_id, token)
        if claim is None:
            return False
        stop = outcomes.lease_lost if reason is StopReason.LEASE_LOST else outcomes.unstarted
        self._hand_off(claim, stop(claim))
        return True

    def cancel_all(self, reason: StopReason) -> None:
        self.give_back(self._prefetch.take_all())
        for job_id, token in list(self._running):
            self.cancel(job_id, token, reason)

    def give_back(self, claims: list[Claim]) -> None:
        """Jobs taken out of the prefetch buffer go back to the queue unstarted, attempt given back."""
        for claim in claims:
            self._hand_off(claim, outcomes.unstarted(claim))

    async def wait_empty(self) -> None:
        """Return once no job is running (call after the prefetch buffer was emptied and closed)."""
        if self._running and self._empty is not None:
            await self._empty.wait()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The runners, until the prefetch buffer is closed and empty."""
        async with anyio.create_task_group() as tg:
            for n in range(self._capacity):
                tg.start_soon(self._runner, name=f"notifyq runner {n}")
            task_status.started()

    async def _runner(self) -> None:
        """Run claims from the buffer until closed. A runner's jobs share one cancel scope until one of
        them is cancelled (its timeout, a lost lease, shutdown); then the runner takes a fresh scope.
        A scope per job cost a quarter of the daemon's CPU on the drain benchmark. Only the job running
        at the time can be hit: a job leaves `_running` and its deadline is lifted, both before the
        runner awaits anything else."""
        while True:
            interrupted: Running | None = None
            scope = anyio.CancelScope()
            try:
                with scope:
                    while True:
                        claim = await self._next()
                        if claim is None:
                            return
                        running = interrupted = self._start(claim, scope)
                        outcome = await self._attempt(running)
                        interrupted = None
                        self._finish(running, outcome)
                        if scope.cancel_called:
                            break  # cancelled after its job's last await: spent, take a fresh one
                        # A handler that never awaits must not starve the claim loop and the completer.
                        # (anyio's checkpoint is this same sleep(0) on asyncio, behind a backend lookup.)
                        await asyncio.sleep(0)
            finally:
                if interrupted is not None:  # cancelled: by its own scope, or the daemon is going down
                    self._finish(interrupted, None)

    async def _next(self) -> Claim | None:
        """The next buffered claim, once the completer has room; None once closed and drained."""
        while await self._prefetch.wait():
            await self._completer.wait_room()
            claim = self._prefetch.pop()
            if claim is not None:  # else another runner took it, or it was given back, while we waited
                return claim
        return None

    def _start(self, claim: Claim, scope: anyio.CancelScope) -> Running:
        job = claim.job
        spec = self._registry.get(job.task)
        running = Running(claim, scope, spec, self._metrics.for_job(job.queue, job.task), time.monotonic())
        if not self._running:
            self._empty = anyio.Event()
        self._running[(job.id, claim.lease_token)] = running
        running.series.started += 1
        running.series.running += 1
        if spec is not None and spec.timeout is not None:
            scope.deadline = anyio.current_time() + spec.timeout
        if self._debug:
            self._log.debug("job_started", job_id=job.id, task=job.task, queue=job.queue, attempt=job.attempt)
        return running

    def _finish(self, running: Running, outcome: Outcome | None) -> None:
        """Account for a finished run and hand its outcome over. `outcome` is None when the run was
        cancelled before it returned."""
        claim, spec = running.claim, running.spec
        job = claim.job
        elapsed = time.monotonic() - running.started
        timeout = spec.timeout if spec is not None else None
        if timeout is not None and not running.scope.cancel_called:
            running.scope.deadline = math.inf
        if running.reason is None and running.scope.cancel_called and timeout is not None:
            # The deadline, not us. A sync handler's thread cannot be cancelled: it returns, late.
            error = f"TimeoutError: timed out after {timeout}s"
            outcome = outcomes.failed(claim, spec, OutcomeKind.TIMED_OUT, error)
        elif outcome is None:
            # Ours (shutdown or a lost lease), or the daemon is going down: give the job back.
            outcome = self._stopped(claim, running.reason or StopReason.SHUTDOWN)
        del self._running[(job.id, claim.lease_token)]
        self.finished += 1
        running.series.running -= 1
        running.series.duration.observe(elapsed)
        if outcome.kind is not OutcomeKind.SUCCEEDED or self._debug:
            _log_outcome(self._log, job.id, job.task, job.queue, job.attempt, outcome, elapsed)
        self._hand_off(claim, outcome)
        if not self._running and self._empty is not None:
            self._empty.set()
        self._on_slot_free()

    def _hand_off(self, claim: Claim, outcome: Outcome) -> None:
        if outcome.kind is OutcomeKind.LEASE_LOST:
            self._metrics.leases_lost.inc()
            self._metrics.for_job(claim.job.queue, claim.job.task).completed[outcome.kind.value] += 1
            self._leases.discard(claim.job.id, claim.lease_token)
        else:
            self._completer.put(outcome)

    async def _attempt(self, running: Running) -> Outcome:
        """Run the handler once and classify what happened."""
        claim, spec = running.claim, running.spec
        if claim.decode_error is not None:
            return outcomes.discarded(claim, f"payload cannot be decoded: {claim.decode_error}")
        if spec is None:  # claimed only for registered tasks, so this is a bug, not a user error
            return outcomes.failed(claim, None, OutcomeKind.FAILED, f"no handler for task {claim.job.task!r}")
        try:
            return outcomes.succeeded(claim, await self._call(spec, claim))
        except Snooze as snooze:
            return outcomes.snoozed(claim, snooze.seconds)
        except Discard as discard:
            return outcomes.discarded(claim, discard.reason)
        except Retry as retry:
            return outcomes.failed(claim, spec, OutcomeKind.RETRIED, f"Retry: {retry.reason}", retry.delay)
        except anyio.get_cancelled_exc_class() as exc:
            if running.scope.cancel_called:
                raise  # ours: timeout, shutdown or lease lost, handled by the caller
            # Either an enclosing scope is cancelling (the daemon is going down: the checkpoint below
            # re-raises) or the handler raised CancelledError itself, which is just a failure.
            await anyio.lowlevel.checkpoint()
            return outcomes.failed(claim, spec, OutcomeKind.RETRIED, outcomes.format_error(exc))
        except BaseException as exc:  # SystemExit from a sync handler, too: a failed job, not a dead daemon
            return outcomes.failed(claim, spec, OutcomeKind.RETRIED, outcomes.format_error(exc))

    async def _call(self, spec: TaskSpec, claim: Claim) -> Any:
        args: tuple[Any, ...] = (claim.job,)
        if spec.takes_context:
            args = (claim.job, Context.for_attempt(claim.job, spec.timeout))
        if spec.is_async:
            return await spec.handler(*args)
        value = await anyio.to_thread.run_sync(spec.handler, *args, limiter=self._threads)
        if inspect.isawaitable(value):  # a callable object whose __call__ is async
            value = await value
        return value

    @staticmethod
    def _stopped(claim: Claim, reason: StopReason) -> Outcome:
        if reason is StopReason.LEASE_LOST:
            return outcomes.lease_lost(claim)
        return outcomes.released(claim)


def _log_outcome(
    log: Any, job_id: int, task: str, queue: str, attempt: int, outcome: Outcome, elapsed: float
) -> None:
    fields = {
        "job_id": job_id,
        "task": task,
        "queue": queue,
        "attempt": attempt,
        "outcome": outcome.kind.value,
        "duration_s": round(elapsed, 6),
    }
    first_line = outcome.error.splitlines()[0] if outcome.error else ""
    if outcome.kind in (OutcomeKind.SUCCEEDED, OutcomeKind.SNOOZED, OutcomeKind.RELEASED):
        log.debug("job_finished", **fields)  # one line per job costs more than a no-op job itself
    elif outcome.state is JobState.QUEUED:
        log.warning("job_failed_will_retry", retry_in_s=round(outcome.delay, 3), error=first_line, **fields)
    elif outcome.kind is OutcomeKind.LEASE_LOST:
        log.warning("lease_lost", **fields)
    else:
        log.error("job_failed", error=first_line, **fields)
