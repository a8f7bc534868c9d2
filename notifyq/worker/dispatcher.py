"""The claim loop: wait for a reason to look for work, claim what the runners and the prefetch buffer
have room for, hand it to the executor.

Each turn: if at least `claim_min` jobs are wanted (free runners plus room in the prefetch buffer), claim
up to that many in one statement (served queues, tasks with a handler, runnable now, by priority then
run_at then id). Waiting for half the buffer to empty makes claims fewer and fuller; how long the claim
took sizes the buffer (executor.py). A short batch while some runner has nothing to do means the queue
is drained: the dispatcher asks the listener to take the idle locks, and the listener wakes it once they
are held for one more claim, which closes the gap between the last claim and the locks. While every
runner is busy the daemon never counts as idle, so producers skip NOTIFY; the buffer is refilled as slots
free. A short claim that still found two or more jobs means a stream is arriving: the daemon looks again
after 5 ms instead of asking for NOTIFY, until a look finds nothing. Then it waits for a wake hint
(notify, a freed slot, a listener reconnect), the next `run_at` among its jobs, or the safety poll,
whichever comes first. Hints that arrive while it is busy fold into one turn, so a burst of finished jobs
costs one claim.

Stopping is two-phase (`stop()`, then after the drain deadline or `stop_now()`): claiming ends at once and
buffered jobs go back to the queue; running jobs get `shutdown_timeout` to finish; then they are
cancelled and their leases released without spending the attempt.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

import anyio

from notifyq import logs
from notifyq.errors import DatabaseUnavailable, QueryError
from notifyq.listener import Listener
from notifyq.metrics import Metrics
from notifyq.models import Claim
from notifyq.retry import Backoff
from notifyq.store import Position, Store
from notifyq.worker import wakeup
from notifyq.worker.executor import Executor, StopReason
from notifyq.worker.wakeup import Wakeup

_DB_RETRY = Backoff(base_seconds=0.2, factor=2.0, cap_seconds=15.0, jitter=0.5)
# When runnable jobs exist that SKIP LOCKED hid from us (another daemon is claiming them), look again
# soon rather than after a whole poll interval.
_CONTENDED_RETRY_SECONDS = 0.05
_TICK = "tick"
_IDLE_RECHECK_SECONDS = 0.1
# While a backlog drains, claims continue after the previous claim's last row; this often at least they
# start from the head again, which bounds how long a job that sorts ahead of that row can wait.
_FULL_SCAN_SECONDS = 1.0
# A short claim that still found this many jobs means a stream of them: look again after this long
# rather than going idle (see the claim loop).
_STREAM_MIN = 2
_STREAM_POLL_SECONDS = 0.005


class Dispatcher:
    def __init__(
        self,
        store: Store,
        executor: Executor,
        listener: Listener,
        wake: Wakeup,
        metrics: Metrics,
        *,
        queues: Sequence[str],
        tasks: Sequence[str],
        max_attempts: Sequence[int | None],
        worker_id: uuid.UUID,
        lease_seconds: float,
        poll_interval: float,
        shutdown_timeout: float,
        on_turn: Callable[[], None] = lambda: None,
        tick: float | None = None,
    ) -> None:
        self._store = store
        self._executor = executor
        self._listener = listener
        self._wake = wake
        self._metrics = metrics
        self._queues = list(queues)
        self._tasks = list(tasks)
        self._max_attempts = list(max_attempts)
        self._worker_id = worker_id
        self._lease_seconds = lease_seconds
        self._poll = poll_interval
        self._shutdown_timeout = shutdown_timeout
        self._after: dict[str, Position] = {}  # per queue, the last row claimed while draining
        self._full_scan_at = -math.inf
        self._on_turn = on_turn
        self._tick = tick
        self._stopping = anyio.Event()
        self._hurry = anyio.Event()
        self._log = logs.get("dispatcher")

    def stop(self) -> None:
        """Stop claiming; running jobs get the shutdown timeout to finish."""
        self._stopping.set()
        self._wake.hint("stop")

    def stop_now(self) -> None:
        """Stop claiming and cancel running jobs at once (their leases are released)."""
        self.stop()
        self._hurry.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as work:
            await work.start(self._executor.run)
            task_status.started()
            await self._claim_loop()
            self._listener.set_idle(False)
            self._executor.release_buffered()
            self._executor.close()
            await self._drain()

    async def _drain(self) -> None:
        running = self._executor.running_count
        if running:
            self._log.info("draining", running=running, timeout_s=self._shutdown_timeout)
        with anyio.move_on_after(self._shutdown_timeout):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_return_when, self._executor.wait_empty, tg)
                tg.start_soon(_return_when, self._hurry.wait, tg)
        if self._executor.running_count:
            self._log.warning("cancelling_jobs", running=self._executor.running_count)
            self._executor.cancel_all(StopReason.SHUTDOWN)

    async def _claim_loop(self) -> None:
        failures = 0
        sources: set[str] = set()
        due: float | None = None  # when the earliest scheduled job becomes runnable (anyio clock)
        streaming = False
        while not self._stopping.is_set():
            self._on_turn()
            self._give_back_stale()
            timeout, reason = self._poll, wakeup.POLL
            wanted = self._executor.wanted
            # While every runner is busy, only a freed slot refills the prefetch buffer: a claim for
            # each notification or poll then would run for nothing while the queue holds only jobs
            # nobody here can run, and producers beside a busy daemon measured 49% of their rate.
            refill = self._executor.hungry or wakeup.SLOT in sources
            if wanted >= self._executor.claim_min and refill:
                try:
                    claimed = await self._claim(wanted)
                    if claimed:
                        # Let the runners start what was just claimed before the bookkeeping below
                        # (going idle, the next run_at): 0.04 ms off the wake-up path, measured in process.
                        await asyncio.sleep(0)
                    # Idle means runners are left without work. Only then are producers asked to
                    # NOTIFY: while every runner is busy, the prefetch buffer is refilled as slots free.
                    idle = claimed < wanted and self._executor.hungry
                    # A stream: jobs keep arriving faster than one per turn. Look again shortly instead
                    # of asking for NOTIFY, whose commit-time lock serializes producers' commits (with
                    # an idle daemon beside them, 8 producers managed 955 inserts/s in all). One empty
                    # look ends the stream. A job now and then (one per wake) still gets its NOTIFY.
                    streaming = idle and (claimed >= _STREAM_MIN or (streaming and claimed > 0))
                    self._listener.set_idle(idle and not streaming)
                    if streaming:
                        timeout, reason = _STREAM_POLL_SECONDS, wakeup.TIMER
                    elif idle:
                        if claimed or sources != {wakeup.POLL} or due is None:
                            # A safety poll that found nothing changes no schedule: anything inserted
                            # since the last look came with a notification. Skip a statement per poll.
                            delay = await self._store.next_run_delay(self._queues, self._tasks)
                            due = math.inf if delay is None else anyio.current_time() + delay
                        delay = due - anyio.current_time()
                        if delay < timeout:
                            timeout, reason = max(delay, _CONTENDED_RETRY_SECONDS), wakeup.TIMER
                        if wakeup.IDLE in sources:
                            # Just went idle: a producer whose commit was checked a moment before the
                            # idle locks were taken is not announced; one more look shortly after
                            # bounds that gap (DESIGN section 4) well below the safety poll.
                            timeout, reason = min(timeout, _IDLE_RECHECK_SECONDS), wakeup.TIMER
                    failures = 0
                except (DatabaseUnavailable, QueryError) as exc:
                    failures += 1
                    if failures == 1 or failures % 10 == 0:
                        self._log.warning("claim_failed", error=str(exc), failures=failures)
                    timeout, reason = _DB_RETRY.delay(failures), wakeup.POLL
            else:
                self._listener.set_idle(False)
            stale_at = self._executor.stale_at()
            if stale_at is not None and stale_at - time.monotonic() < timeout:
                timeout, reason = max(stale_at - time.monotonic(), 0.0), wakeup.TIMER
            sources = await self._wait(timeout, reason)
            for source in sources:
                self._metrics.wakeups.labels(source).inc()

    def _give_back_stale(self) -> None:
        given_back = self._executor.release_stale(time.monotonic())
        if given_back:
            self._log.info("prefetch_given_back", jobs=given_back, note="jobs got slower than the buffer")

    async def _wait(self, seconds: float, reason: str) -> set[str]:
        """Wait for a hint, at most `seconds`; meanwhile turn every `tick` s to show the loop is alive."""
        deadline = anyio.current_time() + seconds
        while True:
            remaining = deadline - anyio.current_time()
            if self._tick is None or remaining <= self._tick:
                return await self._wake.wait(max(remaining, 0.0), reason)
            sources = await self._wake.wait(self._tick, _TICK)
            if sources != {_TICK}:
                return sources
            self._on_turn()

    async def _claim(self, wanted: int) -> int:
        """Claim up to `wanted` jobs, continuing after the previous claim's last row while a backlog
        drains; from the head of the queues at least once a second, and before going idle."""
        claimed_at = time.monotonic()
        if claimed_at - self._full_scan_at >= _FULL_SCAN_SECONDS:
            self._after.clear()
        from_position = bool(self._after)
        claims = await self._claim_once(wanted, claimed_at)
        if len(claims) < wanted and from_position:
            # Short after a position: rows may wait ahead of it (a higher priority, a backdated run_at).
            self._after.clear()
            claims += await self._claim_once(wanted - len(claims), time.monotonic())
        if len(claims) < wanted:
            self._after.clear()  # drained: the next claim starts from the head
        payload_bytes = sum(c.size for c in claims) / len(claims) if claims else 0.0
        self._executor.adapt(time.monotonic() - claimed_at, len(claims) == wanted, payload_bytes)
        return len(claims)

    async def _claim_once(self, wanted: int, claimed_at: float) -> list[Claim]:
        if not self._after:
            self._full_scan_at = claimed_at
        claims = await self._store.claim(
            self._queues,
            self._tasks,
            self._max_attempts,
            wanted,
            self._lease_seconds,
            self._worker_id,
            self._after,
        )
        self._metrics.claims.inc()
        self._metrics.claim_batch.observe(len(claims))
        self._executor.submit(claims, claimed_at)
        for claim in claims:  # sorted in claim order: the last one per queue is its position
            job = claim.job
            self._after[job.queue] = (job.priority, job.run_at, job.id)
        return claims


async def _return_when(wait: Callable[[], Awaitable[object]], tg: anyio.abc.TaskGroup) -> None:
    await wait()
    tg.cancel_scope.cancel()
