"""The prefetch buffer: claimed jobs waiting for a free runner, and how many of them to hold.

Claims land here (`add`) and runners take them (`wait` until one is there, then `pop`), so a runner
that finishes a job starts the next without waiting for the database. The buffer holds `minimum`
(`prefetch`) jobs; while a backlog drains, `adapt` resizes it after each claim to twice what the runners
finished while that claim was on its way, and doubles it whenever a runner found it empty since the
last claim, up to `maximum` (`prefetch_max`) and PREFETCH_BYTES of payloads, at most doubling per claim;
it does not shrink while the backlog lasts. It so holds a few claim round trips of work: short jobs get
large claims, which cost Postgres less per job. Once a claim comes back short, the size drops to
`minimum`.

When the jobs turn slow (a drain of short jobs runs into long ones), the buffer outgrew their pace:
once a buffered job has waited STALE_BUFFER_SECONDS, every job beyond `minimum` is taken out
(`take_stale`) for the executor to give back to the queue, so other daemons can run them. At shutdown,
`take_all` empties it. Every job taken out here still holds a lease, and its outcome (given back, or
lost) is the executor's to hand over; this module does no I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections import deque

from notifyq.metrics import Metrics
from notifyq.models import Claim

# Payloads may be up to 1 MiB each: the buffer grows beyond `minimum` only while its payloads fit here.
PREFETCH_BYTES = 16 * 1024 * 1024
# A job this long in the buffer means the buffer outgrew the jobs' pace.
STALE_BUFFER_SECONDS = 1.0


class Prefetch:
    def __init__(self, minimum: int, maximum: int, metrics: Metrics) -> None:
        self.minimum = minimum
        self._maximum = max(minimum, maximum)
        self._size = minimum
        self._metrics = metrics
        self._buffer: deque[tuple[Claim, float]] = deque()  # with when it was claimed (monotonic)
        self.bytes = 0  # the buffered payloads' size as JSON text
        self._rate_since = (time.monotonic(), 0)
        # Idle runners wait on bare asyncio futures: an anyio.Event per wait showed in the profile. The
        # daemon always runs on asyncio (uvloop where installed), so the futures are safe to use.
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._starved = False  # a runner found the buffer empty since the last `adapt`
        # Jobs went back as stale during this backlog: runners starve because the jobs are slow, not the
        # buffer small, so starvation no longer grows it until a short claim ends the backlog.
        self._slow = False
        self._closed = False
        metrics.prefetch.set(minimum)

    def __len__(self) -> int:
        return len(self._buffer)

    @property
    def size(self) -> int:
        """How many jobs the buffer holds now, between `minimum` and the maximum."""
        return self._size

    @property
    def room(self) -> int:
        return self._size - len(self._buffer)

    @property
    def claim_min(self) -> int:
        """Claim once this many are wanted: waiting for half the buffer to empty makes claims fewer and
        fuller."""
        return max(1, self._size // 2)

    @property
    def bytes_room(self) -> int:
        """Payload bytes the next claim may bring (at least one job's worth: a claim always takes one)."""
        return max(PREFETCH_BYTES - self.bytes, 1)

    def add(self, claims: list[Claim], claimed_at: float) -> None:
        self._buffer.extend((claim, claimed_at) for claim in claims)
        self.bytes += sum(claim.size for claim in claims)
        for _ in range(min(len(claims), len(self._waiting))):
            _wake(self._waiting.popleft())

    async def wait(self) -> bool:
        """Wait until a job is buffered (True) or the buffer is closed and empty (False)."""
        while not self._buffer:
            if self._closed:
                return False
            self._starved = True
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            finally:
                # Cancelled while waiting (Task.cancel cancels the awaited future too): a dead future left
                # in the deque would swallow the wake meant for a live runner.
                if waiter.cancelled() or not waiter.done():
                    with contextlib.suppress(ValueError):
                        self._waiting.remove(waiter)
        return True

    def oldest_claimed_at(self) -> float | None:
        """When the job longest in the buffer was claimed (monotonic clock); None when it is empty."""
        return self._buffer[0][1] if self._buffer else None

    def pop(self) -> Claim | None:
        """The oldest buffered job, if any is left."""
        if not self._buffer:
            return None
        claim = self._buffer.popleft()[0]
        self.bytes -= claim.size
        return claim

    def remove(self, job_id: int, token: uuid.UUID) -> Claim | None:
        """Take out the buffered job with this lease, if it is here."""
        for entry in self._buffer:
            claim = entry[0]
            if claim.job.id == job_id and claim.lease_token == token:
                self._buffer.remove(entry)
                self.bytes -= claim.size
                return claim
        return None

    def close(self) -> None:
        """No more claims: waiting runners return once the buffer is empty."""
        self._closed = True
        while self._waiting:
            _wake(self._waiting.popleft())

    def take_all(self) -> list[Claim]:
        claims = [claim for claim, _ in self._buffer]
        self._buffer.clear()
        self.bytes = 0
        return claims

    def adapt(self, finished: int, claim_seconds: float, backlog: bool, payload_bytes: float) -> None:
        """Resize after a claim that took `claim_seconds` and brought payloads of `payload_bytes` on
        average; `finished` counts the jobs the runners have finished so far (see `prefetch_size`)."""
        now = time.monotonic()
        since, finished_then = self._rate_since
        self._rate_since = (now, finished)
        rate = (finished - finished_then) / (now - since) if now > since else 0.0
        starved, self._starved = self._starved and not self._slow, False
        if not backlog:
            self._slow = False
        self._resize(
            prefetch_size(
                self._size,
                self.minimum,
                self._maximum,
                rate=rate,
                claim_seconds=claim_seconds,
                payload_bytes=payload_bytes,
                backlog=backlog,
                starved=starved,
            )
        )

    def stale_at(self) -> float | None:
        """When the oldest buffered job will have waited too long (monotonic clock), while the buffer
        holds more than `minimum`."""
        if len(self._buffer) <= self.minimum:
            return None
        return self._buffer[0][1] + STALE_BUFFER_SECONDS

    def take_stale(self, now: float) -> list[Claim]:
        """Once the oldest buffered job waited too long, take out every job beyond `minimum`, the most
        recently claimed first, and shrink to `minimum`."""
        at = self.stale_at()
        if at is None or now < at:
            return []
        taken = []
        while len(self._buffer) > self.minimum:
            claim = self._buffer.pop()[0]
            self.bytes -= claim.size
            taken.append(claim)
        self._resize(self.minimum)
        self._slow = True
        return taken

    def _resize(self, size: int) -> None:
        self._size = size
        self._metrics.prefetch.set(size)


def prefetch_size(
    current: int,
    minimum: int,
    maximum: int,
    *,
    rate: float,
    claim_seconds: float,
    payload_bytes: float,
    backlog: bool,
    starved: bool = False,
) -> int:
    """The prefetch buffer's next size. While a backlog remains: twice the jobs the runners finish (at
    `rate` per second) during one claim, or double the current size if a runner found the buffer empty
    (`starved`), never less than the current size; at most double the current size, `maximum`, and
    PREFETCH_BYTES of payloads of `payload_bytes` each, and never below `minimum`. Once a claim comes back
    short: `minimum`. Bigger claims cost Postgres less per job, so a drain of short jobs runs in fewer,
    larger batches (the drain benchmark doubled from prefetch 10 to 300).

    The rate alone could settle low: a daemon woken by a burst while idle made small claims, which are
    quick, so twice the jobs finished during one stayed near `minimum`, and 20,000 jobs drained at half
    the rate of a daemon started on them (benchmarks/README.md, issue 13). Starved runners prove the
    buffer too small, whatever the rate says."""
    if not backlog:
        return minimum
    cap = min(maximum, 2 * current, int(PREFETCH_BYTES / max(payload_bytes, 1.0)))
    wanted = max(math.ceil(2 * rate * claim_seconds), current, 2 * current if starved else 0)
    return max(minimum, min(wanted, cap))


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
