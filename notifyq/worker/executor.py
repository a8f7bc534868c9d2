"""Runs claimed jobs on `capacity` long-lived runner tasks, and turns what happened into an Outcome.

Claims wait in a buffer (the prefetch) until a runner is free, so a runner that finishes a job starts
the next one without waiting for the database. The buffer holds `prefetch` jobs; while a backlog drains
it is resized after each claim to twice what the runners finished while that claim was on its way, up to
`prefetch_max` and PREFETCH_BYTES of payloads, at most doubling per claim. It so holds a few claim round
trips of work: short jobs get large claims, which cost Postgres less per job. When the jobs turn slow
(a drain of short jobs runs into long ones), a buffered job that waited STALE_BUFFER_SECONDS sends every
job beyond `prefetch` back to the queue, for other daemons to take. Runners live as long as the daemon:
starting a task per job cost more than a no-op job itself (anyio's `start_soon` measured about 50 us).

The path of one job is four named steps: start (take the next claim and a cancel scope, with the task's
timeout as its deadline), run (the handler; sync handlers in a worker thread), classify
(worker/outcomes.py) and hand off (to the completer, without awaiting, so a cancelled job still gets its
outcome queued; the runner waits for room in the completer before it takes the next job).

A job is cancelled from outside for one of two reasons, recorded before the cancel: `shutdown` (its lease
is released without spending the attempt) or `lease_lost` (another daemon owns it now, so nothing is
written). Jobs are keyed by (id, lease token): a job can come back to this daemon under a new lease while
a stale run of it is still winding down, and the two must never be confused. A buffered job whose lease
is lost is dropped; at shutdown, buffered jobs are released at once.

Sync handlers cannot be interrupted (Python cannot stop a thread), so their runner stays taken until the
thread returns: a timed-out or cancelled sync handler is reported only once it has really stopped, and
the number of threads never exceeds the concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import math
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel

from notifyq import logs
from notifyq.errors import Discard, Retry, Snooze
from notifyq.metrics import JobSeries, Metrics
from notifyq.models import Claim, JobState, Outcome, OutcomeKind
from notifyq.registry import Registry, TaskSpec
from notifyq.worker import outcomes
from notifyq.worker.completer import Completer
from notifyq.worker.leases import Leases

Key = tuple[int, uuid.UUID]
# Payloads may be up to 1 MiB each: the buffer grows beyond `prefetch` only while its payloads fit here.
PREFETCH_BYTES = 16 * 1024 * 1024
# A job this long in the buffer means the buffer outgrew the jobs' pace.
STALE_BUFFER_SECONDS = 1.0


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
        completer: Completer,
        leases: Leases,
        metrics: Metrics,
        capacity: int,
        on_slot_free: Callable[[], None],
        *,
        prefetch: int = 0,
        prefetch_max: int = 0,
    ) -> None:
        self._registry = registry
        self._completer = completer
        self._leases = leases
        self._metrics = metrics
        self._capacity = capacity
        self._prefetch_min = prefetch
        self._prefetch_max = max(prefetch, prefetch_max)
        self._prefetch = prefetch  # the buffer's size now, between the two
        self._finished = 0
        self._rate_since = (time.monotonic(), 0)
        self._on_slot_free = on_slot_free
        self._buffer: deque[tuple[Claim, float]] = deque()  # with when it was claimed
        self._running: dict[Key, Running] = {}
        # Idle runners wait on bare asyncio futures: an anyio.Event per wait showed in the profile. The
        # daemon always runs on asyncio (uvloop where installed), so the futures are safe to use.
        self._parked: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._threads = anyio.CapacityLimiter(capacity)
        self._empty = anyio.Event()
        self._empty.set()
        self._log = logs.get("executor")
        self._debug = logs.enabled("debug")

    @property
    def wanted(self) -> int:
        """How many jobs to claim now: free runners plus room in the prefetch buffer."""
        return self._capacity + self._prefetch - len(self._running) - len(self._buffer)

    @property
    def claim_min(self) -> int:
        """Claim once this many are wanted: waiting for half the buffer to empty makes claims fewer and
        fuller."""
        return max(1, self._prefetch // 2)

    def adapt(self, claim_seconds: float, backlog: bool, payload_bytes: float) -> None:
        """Resize the prefetch buffer after a claim that took `claim_seconds` and brought payloads of
        `payload_bytes` on average (see `prefetch_size`)."""
        now = time.monotonic()
        since, finished = self._rate_since
        self._rate_since = (now, self._finished)
        rate = (self._finished - finished) / (now - since) if now > since else 0.0
        self._resize(
            prefetch_size(
                self._prefetch,
                self._prefetch_min,
                self._prefetch_max,
                rate=rate,
                claim_seconds=claim_seconds,
                payload_bytes=payload_bytes,
                backlog=backlog,
            )
        )

    def _resize(self, size: int) -> None:
        self._prefetch = size
        self._metrics.prefetch.set(size)

    def stale_at(self) -> float | None:
        """When the oldest buffered job will have waited too long (monotonic clock), while the buffer
        holds more than `prefetch`."""
        if len(self._buffer) <= self._prefetch_min:
            return None
        return self._buffer[0][1] + STALE_BUFFER_SECONDS

    def release_stale(self, now: float) -> int:
        """Once the oldest buffered job waited too long, give every job beyond `prefetch` back to the
        queue, the most recently claimed first, and shrink the buffer to `prefetch`. Returns how many."""
        at = self.stale_at()
        if at is None or now < at:
            return 0
        given_back = 0
        while len(self._buffer) > self._prefetch_min:
            claim, _ = self._buffer.pop()
            self._hand_off(claim, outcomes.unstarted(claim))
            given_back += 1
        self._resize(self._prefetch_min)
        self._check_empty()
        return given_back

    @property
    def hungry(self) -> bool:
        """Some runner has nothing to run, not even in the buffer."""
        return self._capacity - len(self._running) > len(self._buffer)

    @property
    def running_count(self) -> int:
        return len(self._running)

    def submit(self, claims: list[Claim], claimed_at: float) -> None:
        """Take the leases now (so `wanted` is exact at once) and hand the claims to the runners."""
        for claim in claims:
            self._leases.add(claim.job.id, claim.lease_token, claimed_at)
            self._metrics.for_job(claim.job.queue, claim.job.task).waited.observe(claim.waited)
        self._buffer.extend((claim, claimed_at) for claim in claims)
        if self._buffer and self._empty.is_set():
            self._empty = anyio.Event()
        for _ in range(min(len(claims), len(self._parked))):
            _wake(self._parked.popleft())

    def cancel(self, job_id: int, token: uuid.UUID, reason: StopReason) -> bool:
        running = self._running.get((job_id, token))
        if running is None:
            return self._drop_buffered(job_id, token, reason)
        running.reason = running.reason or reason
        running.scope.cancel()
        return True

    def cancel_all(self, reason: StopReason) -> None:
        self.release_buffered()
        for job_id, token in list(self._running):
            self.cancel(job_id, token, reason)

    def release_buffered(self) -> None:
        """Shutdown: jobs claimed but not started go back to the queue at once, attempt given back."""
        while self._buffer:
            claim, _ = self._buffer.popleft()
            self._hand_off(claim, outcomes.unstarted(claim))
        self._check_empty()

    def close(self) -> None:
        """No more claims: runners return once the buffer is empty."""
        self._closed = True
        while self._parked:
            _wake(self._parked.popleft())

    async def wait_empty(self) -> None:
        await self._empty.wait()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The runners, until `close()` and the buffer is empty."""
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
        while True:
            if not self._buffer:
                if self._closed:
                    return None
                parked = asyncio.get_running_loop().create_future()
                self._parked.append(parked)
                try:
                    await parked
                finally:
                    # Cancelled while parked (Task.cancel cancels the awaited future too): a dead future
                    # left in the deque would swallow the wake meant for a live runner.
                    if parked.cancelled() or not parked.done():
                        with contextlib.suppress(ValueError):
                            self._parked.remove(parked)
                continue
            await self._completer.wait_room()
            if self._buffer:  # else another runner took it, or shutdown released it, while we waited
                return self._buffer.popleft()[0]

    def _start(self, claim: Claim, scope: anyio.CancelScope) -> Running:
        job = claim.job
        spec = self._registry.get(job.task)
        running = Running(claim, scope, spec, self._metrics.for_job(job.queue, job.task), time.monotonic())
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
        self._finished += 1
        running.series.running -= 1
        running.series.duration.observe(elapsed)
        if outcome.kind is not OutcomeKind.SUCCEEDED or self._debug:
            _log_outcome(self._log, job.id, job.task, job.queue, job.attempt, outcome, elapsed)
        self._hand_off(claim, outcome)
        self._check_empty()
        self._on_slot_free()

    def _hand_off(self, claim: Claim, outcome: Outcome) -> None:
        if outcome.kind is OutcomeKind.LEASE_LOST:
            self._metrics.leases_lost.inc()
            self._metrics.for_job(claim.job.queue, claim.job.task).completed[outcome.kind.value] += 1
            self._leases.discard(claim.job.id, claim.lease_token)
        else:
            self._completer.put(outcome)

    def _drop_buffered(self, job_id: int, token: uuid.UUID, reason: StopReason) -> bool:
        for entry in self._buffer:
            claim = entry[0]
            if claim.job.id == job_id and claim.lease_token == token:
                self._buffer.remove(entry)
                stop = outcomes.lease_lost if reason is StopReason.LEASE_LOST else outcomes.unstarted
                self._hand_off(claim, stop(claim))
                self._check_empty()
                return True
        return False

    def _check_empty(self) -> None:
        if not self._running and not self._buffer:
            self._empty.set()

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


def prefetch_size(
    current: int,
    minimum: int,
    maximum: int,
    *,
    rate: float,
    claim_seconds: float,
    payload_bytes: float,
    backlog: bool,
) -> int:
    """The prefetch buffer's next size. While a backlog remains: twice the jobs the runners finish (at
    `rate` per second) during one claim, at most double the current size, `maximum`, and PREFETCH_BYTES
    of payloads of `payload_bytes` each, and never below `minimum`. Once a claim comes back short:
    `minimum`. Bigger claims cost Postgres less per job, so a drain of short jobs runs in fewer, larger
    batches (the drain benchmark doubled from prefetch 10 to 300)."""
    if not backlog:
        return minimum
    cap = min(maximum, 2 * current, int(PREFETCH_BYTES / max(payload_bytes, 1.0)))
    return max(minimum, min(math.ceil(2 * rate * claim_seconds), cap))


def _wake(parked: asyncio.Future[None]) -> None:
    if not parked.done():
        parked.set_result(None)


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
