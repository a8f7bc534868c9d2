"""The claim loop: wait for a reason to look for work, claim what the runners and the prefetch buffer
have room for, hand it to the buffer.

Each turn: if at least `claim_min` jobs are wanted (free runners plus room in the prefetch buffer), claim
up to that many (worker/claimer.py); how long the claim took sizes the buffer (worker/prefetch.py). What
the claim found decides the mode (`mode_after`): a full claim, or one that left no runner without work,
keeps the daemon busy; a short claim that still found two or more jobs means a stream is arriving, and
the daemon looks again after STREAM_POLL_SECONDS instead of asking for NOTIFY; otherwise it is idle and
asks the wake topic to take the idle locks, which wakes it once more when they are held, for one more
claim that closes the gap between the last claim and the locks. How long to wait then (`wait_plan`) is
the nearest of: the safety poll, the next `run_at` among its jobs, the stream's next look, the post-idle
re-check and the oldest buffered job turning stale; any wake hint (a notification, a freed slot, a
reconnect) ends the wait early, and hints that arrive while it is busy fold into one turn, so a burst of
finished jobs costs one claim. While every runner is busy, only a freed slot refills the buffer.

Stopping is two-phase (`stop()`, then after the drain deadline or `stop_now()`): claiming ends at once and
buffered jobs go back to the queue; running jobs get `shutdown_timeout` to finish; then they are
cancelled and their leases released without spending the attempt.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from collections.abc import Awaitable, Callable

import anyio

from notifyq import logs
from notifyq.errors import DatabaseUnavailable, QueryError
from notifyq.metrics import Metrics
from notifyq.retry import Backoff
from notifyq.wakeup import WakeSource, WakeTopic, Wakeup
from notifyq.worker.claimer import Claimer
from notifyq.worker.executor import Executor, StopReason
from notifyq.worker.prefetch import Prefetch

_DB_RETRY = Backoff(base_seconds=0.2, factor=2.0, cap_seconds=15.0, jitter=0.5)
# When runnable jobs exist that SKIP LOCKED hid from us (another daemon is claiming them), look again
# soon rather than after a whole poll interval.
CONTENDED_RETRY_SECONDS = 0.05
# Just idle: one more look this soon bounds the gated NOTIFY's race window well below the safety poll.
IDLE_RECHECK_SECONDS = 0.1
# A short claim that still found this many jobs means a stream of them: look again after this long
# rather than going idle. With an idle daemon beside them (so every commit NOTIFYs, which takes a
# commit-time lock that serializes producers), 8 producers managed 955 inserts/s in all.
STREAM_MIN = 2
STREAM_POLL_SECONDS = 0.005


class Mode(enum.Enum):
    BUSY = "busy"  # some runner still has work, or the claim was full
    STREAM = "stream"  # short claims that keep finding jobs: poll shortly, no NOTIFY
    IDLE = "idle"  # a runner has nothing to do: take the idle locks, wait for NOTIFY


def mode_after(claimed: int, wanted: int, hungry: bool, streaming: bool) -> Mode:
    """The mode after a claim of `claimed` out of `wanted`; `hungry`: a runner has nothing to run, not
    even in the buffer; `streaming`: the mode before was STREAM. One empty look ends a stream."""
    if claimed >= wanted or not hungry:
        return Mode.BUSY
    if claimed >= STREAM_MIN or (streaming and claimed > 0):
        return Mode.STREAM
    return Mode.IDLE


def should_claim(wanted: int, claim_min: int, hungry: bool, sources: set[WakeSource]) -> bool:
    """Claim when enough is wanted, and only while a runner is hungry or a slot was just freed: while
    every runner is busy, a claim per notification or poll would run for nothing whenever the queue holds
    only jobs nobody here can run (producers beside a busy daemon measured 49% of their rate)."""
    return wanted >= claim_min and (hungry or WakeSource.SLOT in sources)


def wait_plan(
    *,
    poll: float,
    mode: Mode,
    due_in: float,
    just_idle: bool,
    stale_in: float | None,
) -> tuple[float, WakeSource]:
    """How long to wait for a hint, and what to call the wake-up if none comes. `due_in`: seconds until
    the earliest scheduled job (inf: none); `just_idle`: the idle locks were just taken; `stale_in`:
    seconds until the oldest buffered job turns stale (None: nothing to give back)."""
    timeout, reason = poll, WakeSource.POLL
    if mode is Mode.STREAM:
        timeout, reason = STREAM_POLL_SECONDS, WakeSource.TIMER
    elif mode is Mode.IDLE:
        if due_in < timeout:
            timeout, reason = max(due_in, CONTENDED_RETRY_SECONDS), WakeSource.TIMER
        if just_idle:
            timeout, reason = min(timeout, IDLE_RECHECK_SECONDS), WakeSource.TIMER
    if stale_in is not None and stale_in < timeout:
        timeout, reason = max(stale_in, 0.0), WakeSource.TIMER
    return timeout, reason


class Dispatcher:
    def __init__(
        self,
        claimer: Claimer,
        prefetch: Prefetch,
        executor: Executor,
        wake_topic: WakeTopic,
        wake: Wakeup,
        metrics: Metrics,
        *,
        poll_interval: float,
        shutdown_timeout: float,
        on_turn: Callable[[], None] = lambda: None,
        tick: float | None = None,
    ) -> None:
        self._claimer = claimer
        self._prefetch = prefetch
        self._executor = executor
        self._wake_topic = wake_topic
        self._wake = wake
        self._metrics = metrics
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
        self._wake.hint(WakeSource.STOP)

    def stop_now(self) -> None:
        """Stop claiming and cancel running jobs at once (their leases are released)."""
        self.stop()
        self._hurry.set()

    @property
    def _hungry(self) -> bool:
        """Some runner has nothing to run, not even in the buffer."""
        return self._executor.free > len(self._prefetch)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as work:
            await work.start(self._executor.run)
            task_status.started()
            await self._claim_loop()
            self._wake_topic.set_idle(False)
            self._executor.give_back(self._prefetch.take_all())
            self._prefetch.close()
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
        sources: set[WakeSource] = set()
        due: float | None = None  # when the earliest scheduled job becomes runnable (anyio clock)
        mode = Mode.BUSY
        while not self._stopping.is_set():
            self._on_turn()
            self._give_back_stale()
            wanted = self._executor.free + self._prefetch.room
            if should_claim(wanted, self._prefetch.claim_min, self._hungry, sources):
                try:
                    claimed = await self._claim(wanted)
                    if claimed:
                        # Let the runners start what was just claimed before the bookkeeping below
                        # (going idle, the next run_at): 0.04 ms off the wake-up path, measured in process.
                        await asyncio.sleep(0)
                    # A claim its byte budget cut short found a backlog all the same.
                    asked = claimed if self._claimer.filled else wanted
                    mode = mode_after(claimed, asked, self._hungry, mode is Mode.STREAM)
                    self._wake_topic.set_idle(mode is Mode.IDLE)
                    if mode is Mode.IDLE and (claimed or sources != {WakeSource.POLL} or due is None):
                        # A safety poll that found nothing changes no schedule: anything inserted
                        # since the last look came with a notification. Skip a statement per poll.
                        delay = await self._claimer.next_run_delay()
                        due = math.inf if delay is None else anyio.current_time() + delay
                    due_in = math.inf if due is None else due - anyio.current_time()
                    timeout, reason = wait_plan(
                        poll=self._poll,
                        mode=mode,
                        due_in=due_in,
                        just_idle=WakeSource.IDLE in sources,
                        stale_in=self._stale_in(),
                    )
                    failures = 0
                except (DatabaseUnavailable, QueryError) as exc:
                    failures += 1
                    if failures == 1 or failures % 10 == 0:
                        self._log.warning("claim_failed", error=str(exc), failures=failures)
                    timeout, reason = wait_plan(
                        poll=_DB_RETRY.delay(failures),
                        mode=Mode.BUSY,
                        due_in=math.inf,
                        just_idle=False,
                        stale_in=self._stale_in(),
                    )
            else:
                self._wake_topic.set_idle(False)
                timeout, reason = wait_plan(
                    poll=self._poll,
                    mode=Mode.BUSY,
                    due_in=math.inf,
                    just_idle=False,
                    stale_in=self._stale_in(),
                )
            sources = await self._wait(timeout, reason)
            for source in sources:
                self._metrics.wakeups.labels(source.value).inc()

    def _stale_in(self) -> float | None:
        stale_at = self._prefetch.stale_at()
        return None if stale_at is None else stale_at - time.monotonic()

    def _give_back_stale(self) -> None:
        stale = self._prefetch.take_stale(time.monotonic())
        if stale:
            self._executor.give_back(stale)
            self._log.info("prefetch_given_back", jobs=len(stale), note="jobs got slower than the buffer")

    async def _wait(self, seconds: float, reason: WakeSource) -> set[WakeSource]:
        """Wait for a hint, at most `seconds`; meanwhile turn every `tick` s to show the loop is alive."""
        deadline = anyio.current_time() + seconds
        while True:
            remaining = deadline - anyio.current_time()
            if self._tick is None or remaining <= self._tick:
                return await self._wake.wait(max(remaining, 0.0), reason)
            sources = await self._wake.wait(self._tick, WakeSource.TICK)
            if sources != {WakeSource.TICK}:
                return sources
            self._on_turn()

    async def _claim(self, wanted: int) -> int:
        claimed_at = time.monotonic()
        claims = await self._claimer.claim(wanted, self._prefetch.bytes_room)  # already in the buffer
        payload_bytes = sum(c.size for c in claims) / len(claims) if claims else 0.0
        backlog = len(claims) == wanted or self._claimer.filled
        self._prefetch.adapt(self._executor.finished, time.monotonic() - claimed_at, backlog, payload_bytes)
        return len(claims)


async def _return_when(wait: Callable[[], Awaitable[object]], tg: anyio.abc.TaskGroup) -> None:
    await wait()
    tg.cancel_scope.cancel()
