"""Runs claimed jobs on `capacity` long-lived runner tasks, and turns what happened into an Outcome.

Runners take jobs from the prefetch buffer (worker/prefetch.py), so a runner that finishes a job
starts the next without waiting for the database. Runners live as long as the daemon: starting a task
per job cost more than a no-op job itself (anyio's `start_soon` measured about 50 us).

The path of one job is four named steps: start (take the next claim, have the starter count its attempt
in the database, fenced by a lease that must still be current, and take a cancel scope with the task's
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

One daemon never runs one job twice at once: a job claimed again while an older run of it is still
winding down (its lease expired and was rescued, then this daemon claimed it anew) waits until that run
has ended, which is cancelled as a lost lease.

Each begun job tells the starter when its handler is being called (or that it will not run here), so
that the daemon's `entered_through` mark can follow: an async handler just before the call (the
starter shares this event loop, so it cannot write the mark before the runner yields), a sync one from
its thread. See worker/starter.py.

Runners survive whatever a handler does. A handler that cancels its own task, or an error escaping the
classification, ends that job as a failed attempt (never a release: a job that breaks its runner must not
come back with its attempt given back, for ever) and the runner carries on with a fresh loop.
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
from notifyq.metrics import JobSeries, Metrics
from notifyq.models import Claim, JobState, Outcome, OutcomeKind
from notifyq.registry import Registry, TaskSpec
from notifyq.worker import outcomes
from notifyq.worker.completer import Completer
from notifyq.worker.leases import Leases
from notifyq.worker.prefetch import Prefetch
from notifyq.worker.starter import Starter

# Runners take a buffered job within milliseconds when one is free: a job waiting this long beside a
# free runner means the executor is stuck, which /readyz and the systemd watchdog report.
STUCK_SECONDS = 30.0

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
    ended: anyio.Event | None = None  # made when a newer claim of the same job waits for this run


class Executor:
    def __init__(
        self,
        registry: Registry,
        prefetch: Prefetch,
        starter: Starter,
        completer: Completer,
        leases: Leases,
        metrics: Metrics,
        capacity: int,
        on_slot_free: Callable[[], None],
    ) -> None:
        self._registry = registry
        self._prefetch = prefetch
        self._starter = starter
        self._completer = completer
        self._leases = leases
        self._metrics = metrics
        self._capacity = capacity
        self.finished = 0  # jobs finished since start: their rate sizes the prefetch buffer
        self._on_slot_free = on_slot_free
        self._running: dict[int, Running] = {}  # by job id: one run per job at a time
        self._starting = 0  # runners holding a claim while its attempt is being counted
        self._threads = anyio.CapacityLimiter(capacity)
        # Made only when someone waits: a no-op job empties the executor each time it ends, and an anyio
        # Event costs a look-up of the running async library (a tenth of a drain's time when made per job).
        self._empty: anyio.Event | None = None  # set when the last running job finishes
        self._log = logs.get("executor")
        self._debug = logs.enabled("debug")

    @property
    def free(self) -> int:
        """Runners with no job."""
        return self._capacity - len(self._running) - self._starting

    @property
    def running_count(self) -> int:
        return len(self._running)

    def cancel(self, job_id: int, token: uuid.UUID, reason: StopReason) -> bool:
        """Cancel the run (or drop the buffered job) holding this lease; False if there is none."""
        running = self._running.get(job_id)
        if running is not None and running.claim.lease_token == token:
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
        for job_id, running in list(self._running.items()):
            self.cancel(job_id, running.claim.lease_token, reason)

    def give_back(self, claims: list[Claim]) -> None:
        """Jobs taken out of the prefetch buffer go back to the queue unstarted, attempt given back."""
        for claim in claims:
            self._hand_off(claim, outcomes.unstarted(claim))

    async def wait_empty(self) -> None:
        """Return once no job is running (call after the prefetch buffer was emptied and closed)."""
        if self._running:
            if self._empty is None:
                self._empty = anyio.Event()
            await self._empty.wait()

    def stuck(self) -> str | None:
        """Why the executor is stuck, if it is: a buffered job has waited STUCK_SECONDS beside a free
        runner (runners take one within milliseconds)."""
        oldest = self._prefetch.oldest_claimed_at()
        if oldest is None or self.free <= 0:
            return None
        waited = time.monotonic() - oldest
        if waited < STUCK_SECONDS:
            return None
        return f"executor stuck: a job has waited {waited:.0f}s beside {self.free} free runners"

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The runners, until the prefetch buffer is closed and empty."""
        async with anyio.create_task_group() as outer:
            await outer.start(self._starter.run)
            async with anyio.create_task_group() as tg:
                for n in range(self._capacity):
                    tg.start_soon(self._runner, name=f"notifyq runner {n}")
                task_status.started()
            outer.cancel_scope.cancel()

    async def _runner(self) -> None:
        """Run claims from the buffer until closed; whatever escapes a job restarts the loop."""
        while True:
            try:
                await self._run_jobs()
                return
            except BaseException as exc:
                if _cancelled_from_outside(exc):
                    raise
                task = asyncio.current_task()
                if isinstance(exc, asyncio.CancelledError) and task is not None:
                    task.uncancel()  # the handler's own cancel request: withdrawn, so it hits nothing later
                self._metrics.runner_interruptions.inc()
                self._log.error(
                    "runner_interrupted", error=outcomes.format_error(exc), note="runner restarted"
                )

    async def _run_jobs(self) -> None:
        """A runner's jobs share one cancel scope until one of them is cancelled (its timeout, a lost
        lease, shutdown); then the runner takes a fresh scope. A scope per job cost a quarter of the
        daemon's CPU on the drain benchmark. Only the job running at the time can be hit: a job leaves
        `_running` and its deadline is lifted, both before the runner awaits anything else."""
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
            except BaseException as exc:
                if interrupted is not None and not _cancelled_from_outside(exc):
                    # Not a cancel of ours: the job broke its runner. A failed attempt, never a release.
                    self._finish(interrupted, None, broken=exc)
                    interrupted = None
                raise
            finally:
                if interrupted is not None:  # cancelled: by its own scope, or the daemon is going down
                    self._finish(interrupted, None)

    async def _next(self) -> Claim | None:
        """The next buffered claim whose attempt is counted (see worker/starter.py), once the completer
        has room; None once closed and drained."""
        while await self._prefetch.wait():
            await self._completer.wait_room()
            claim = self._prefetch.pop()
            if claim is None:  # another runner took it, or it was given back, while we waited
                continue
            self._starting += 1
            try:
                if claim.job.id in self._running:
                    await self._wait_for_older_run(claim)
                started = await self._starter.begin(claim)
            except BaseException:
                # Shutdown, or a handler's stray cancel of this task: a claim taken out of the buffer is
                # handed back, never lost (its attempt given back if the begin got through after all).
                # The starter hears of it once the completer has given the attempt back (settled()).
                self._hand_off(claim, outcomes.unstarted(claim))
                raise
            finally:
                self._starting -= 1
            job = claim.job
            if started and self._leases.fresh(job.id, claim.lease_token):
                return claim
            if started:
                # Begun, but the loop was then held up (a handler blocking it, a frozen process) for so
                # long that the lease may have run out and the job be running elsewhere: not run here.
                reason = "lease unconfirmed for too long since its begin"
            else:
                # Its lease is gone or ran out (another daemon may own the job), or the database could
                # not be asked.
                reason = "lease gone or expired, or the database unreachable"
            # Back to the queue, fenced by the lease token, so a lost lease writes nothing.
            self._log.warning("job_not_started", job_id=job.id, task=job.task, queue=job.queue, reason=reason)
            self._hand_off(claim, outcomes.unstarted(claim))
        return None

    async def _wait_for_older_run(self, claim: Claim) -> None:
        older = self._running[claim.job.id]
        # The newer claim proves the older lease expired and was rescued: that run is a lost lease.
        self._log.warning("job_claimed_while_running", job_id=claim.job.id, note="waiting for the older run")
        if older.ended is None:
            older.ended = anyio.Event()
        older.reason = older.reason or StopReason.LEASE_LOST
        older.scope.cancel()
        await older.ended.wait()

    def _start(self, claim: Claim, scope: anyio.CancelScope) -> Running:
        job = claim.job
        spec = self._registry.get(job.task)
        running = Running(claim, scope, spec, self._metrics.for_job(job.queue, job.task), time.monotonic())
        self._running[job.id] = running
        running.series.started += 1
        running.series.running += 1
        if spec is not None and spec.timeout is not None:
            scope.deadline = anyio.current_time() + spec.timeout
        if spec is None or spec.is_async:
            # Called in this same step, before the starter can write the mark again (see starter.py).
            # A sync handler's thread says so itself once it calls the handler.
            self._starter.entered(job.id, claim.lease_token)
        if self._debug:
            self._log.debug("job_started", job_id=job.id, task=job.task, queue=job.queue, attempt=job.attempt)
        return running

    def _finish(self, running: Running, outcome: Outcome | None, broken: BaseException | None = None) -> None:
        """Account for a finished run and hand its outcome over. `outcome` is None when the run was
        cancelled before it returned, or `broken` by something that escaped it."""
        claim, spec = running.claim, running.spec
        job = claim.job
        elapsed = time.monotonic() - running.started
        timeout = spec.timeout if spec is not None else None
        if timeout is not None and not running.scope.cancel_called:
            running.scope.deadline = math.inf
        if broken is not None:
            error = f"notifyq: the run broke its runner: {outcomes.describe_error(broken)}"
            outcome = outcomes.failed(claim, spec, OutcomeKind.RETRIED, error)
        elif running.reason is None and running.scope.cancel_called and timeout is not None:
            # The deadline, not us. A sync handler's thread cannot be cancelled: it returns, late.
            error = f"TimeoutError: timed out after {timeout}s"
            outcome = outcomes.failed(claim, spec, OutcomeKind.TIMED_OUT, error)
        elif outcome is None:
            # Ours (shutdown or a lost lease), or the daemon is going down: give the job back.
            outcome = self._stopped(claim, running.reason or StopReason.SHUTDOWN)
        del self._running[job.id]
        self._starter.entered(job.id, claim.lease_token)  # in case nothing called the handler
        if running.ended is not None:
            running.ended.set()
        self.finished += 1
        running.series.running -= 1
        running.series.duration.observe(elapsed)
        if outcome.kind is not OutcomeKind.SUCCEEDED or self._debug:
            _log_outcome(self._log, job.id, job.task, job.queue, job.attempt, outcome, elapsed)
        self._hand_off(claim, outcome)
        if not self._running and self._empty is not None:
            self._empty.set()
            self._empty = None
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
            value = await self._call(spec, claim)
        except anyio.get_cancelled_exc_class() as exc:
            if running.scope.cancel_called:
                raise  # ours: timeout, shutdown or lease lost, handled by the caller
            # Either an enclosing scope is cancelling (the daemon is going down: the checkpoint below
            # re-raises) or the handler raised CancelledError itself, which is just a failure.
            await anyio.lowlevel.checkpoint()
            return outcomes.from_exception(claim, spec, exc)
        except BaseException as exc:  # SystemExit from a sync handler, too: a failed job, not a dead daemon
            return outcomes.from_exception(claim, spec, exc)
        outcome, dropped = outcomes.from_value(claim, value)
        if dropped is not None:
            self._metrics.results_dropped.labels(dropped).inc()
            self._log.warning(
                "result_dropped",
                job_id=claim.job.id,
                task=claim.job.task,
                queue=claim.job.queue,
                reason=dropped,
            )
        return outcome

    async def _call(self, spec: TaskSpec, claim: Claim) -> Any:
        args: tuple[Any, ...] = (claim.job,)
        if spec.takes_context:
            args = (claim.job, Context.for_attempt(claim.job, spec.timeout))
        if spec.is_async:
            return await spec.handler(*args)
        value = await anyio.to_thread.run_sync(
            _entered_then(spec.handler, claim, self._starter), *args, limiter=self._threads
        )
        if inspect.isawaitable(value):  # a callable object whose __call__ is async
            value = await value
        return value

    @staticmethod
    def _stopped(claim: Claim, reason: StopReason) -> Outcome:
        if reason is StopReason.LEASE_LOST:
            return outcomes.lease_lost(claim)
        return outcomes.released(claim)


def _entered_then(handler: Callable[..., Any], claim: Claim, starter: Starter) -> Callable[..., Any]:
    """The sync handler, telling the starter (on the loop) from its thread that it is being called."""
    loop = asyncio.get_running_loop()

    def call(*args: Any) -> Any:
        loop.call_soon_threadsafe(starter.entered, claim.job.id, claim.lease_token)
        return handler(*args)

    return call


def _cancelled_from_outside(exc: BaseException) -> bool:
    """A cancellation of the daemon's (shutdown), not one a handler made of its own task."""
    if not isinstance(exc, anyio.get_cancelled_exc_class()):
        return False
    return anyio.current_effective_deadline() == -math.inf


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
