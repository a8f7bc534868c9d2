"""The claim loop: wait for a reason to look for work, claim at most the free slots, start them.

Each turn: if slots are free, claim up to that many jobs in one statement (served queues, tasks with a
handler, runnable now, by priority then run_at then id). A full batch means there may be more, so the
daemon stays busy (no idle locks, so producers skip NOTIFY). A short batch means the queue is drained:
the dispatcher asks the listener to take the idle locks, and the listener wakes it once they are held
for one more claim, which closes the gap between the last claim and the locks. Then it waits for a
wake hint (notify, a freed slot, a listener reconnect), the next `run_at` among its jobs, or the safety
poll, whichever comes first. Hints that arrive while it is busy fold into one turn, so a burst of
finished jobs costs one claim.

Stopping is two-phase (`stop()`, then after the drain deadline or `stop_now()`): claiming ends at once;
running jobs get `shutdown_timeout` to finish; then they are cancelled and their leases released
without spending the attempt.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

import anyio

from notifyq import logs
from notifyq.errors import DatabaseUnavailable, QueryError
from notifyq.listener import Listener
from notifyq.metrics import Metrics
from notifyq.retry import Backoff
from notifyq.store import Store
from notifyq.worker import wakeup
from notifyq.worker.executor import Executor, StopReason
from notifyq.worker.wakeup import Wakeup

_DB_RETRY = Backoff(base_seconds=0.2, factor=2.0, cap_seconds=15.0, jitter=0.5)
# When runnable jobs exist that SKIP LOCKED hid from us (another daemon is claiming them), look again
# soon rather than after a whole poll interval.
_CONTENDED_RETRY_SECONDS = 0.05
_TICK = "tick"
_IDLE_RECHECK_SECONDS = 0.1


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
            task_status.started()
            await self._claim_loop(work)
            self._listener.set_idle(False)
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

    async def _claim_loop(self, work: anyio.abc.TaskGroup) -> None:
        failures = 0
        sources: set[str] = set()
        while not self._stopping.is_set():
            self._on_turn()
            timeout, reason = self._poll, wakeup.POLL
            free = self._executor.free
            if free > 0:
                try:
                    claimed = await self._claim(work, free)
                    # A full batch means more may be waiting: busy, so producers skip NOTIFY.
                    self._listener.set_idle(claimed < free)
                    if claimed < free:
                        delay = await self._store.next_run_delay(self._queues, self._tasks)
                        if delay is not None and delay < timeout:
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
            sources = await self._wait(timeout, reason)
            for source in sources:
                self._metrics.wakeups.labels(source).inc()

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

    async def _claim(self, work: anyio.abc.TaskGroup, free: int) -> int:
        claimed_at = time.monotonic()
        claims = await self._store.claim(
            self._queues,
            self._tasks,
            self._max_attempts,
            free,
            self._lease_seconds,
            self._worker_id,
        )
        self._metrics.claims.inc()
        self._metrics.claim_batch.observe(len(claims))
        for claim in claims:
            self._executor.start(work, claim, claimed_at)
        return len(claims)


async def _return_when(wait: Callable[[], Awaitable[object]], tg: anyio.abc.TaskGroup) -> None:
    await wait()
    tg.cancel_scope.cancel()
