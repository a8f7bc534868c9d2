"""The claim: which jobs this daemon takes, in which statement, from which position.

A claim takes up to `wanted` jobs of the daemon's scope (its queues, the tasks it has handlers for,
their max_attempts overrides, its lease and worker id) that are runnable now, by priority, then run_at,
then id, and leases them. Two statements do it (sql/queries/worker.sql): `claim_head` takes one queue
from its head, the commonest claim and the one after every wake-up, in a statement that plans in two
thirds of the time; `claim_jobs` takes several queues, or continues after a position.

Positions: while a backlog drains, each claim continues after the previous claim's last row in each
queue, which skips the index entries of every row claimed since the last vacuum (a scan from the head
walked them all: a 1,000,000-job backlog drained at 43% of the 20,000-job rate). A row that sorts ahead
of the position (a higher priority, a backdated run_at) is found by a scan from the head, which runs
after a short claim and at least once every FULL_SCAN_SECONDS.

Size: a claim takes at most `wanted` jobs and, beyond the first, payloads within a byte budget (what the
prefetch buffer has room for), so a claim that reaches 1 MiB payloads takes a few, not hundreds. A claim
that still runs past its statement timeout (a slow database, a short lease) halves the most the next
claims may take, rows and bytes, and each claim that returns in time doubles it back: large payloads with
a one-second lease drain instead of timing out for ever.

This is where a claim's scope is decided, so it is where pausing a queue, cluster-wide concurrency
limits and rate limits belong when they come: as conditions of the claim statements, fed from here.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from notifyq import logs
from notifyq.errors import StatementTimeout
from notifyq.metrics import Metrics
from notifyq.models import Claim
from notifyq.store import Position, Store
from notifyq.worker.leases import Leases

# While a backlog drains, claims continue after the previous claim's last row; this often at least they
# start from the head again, which bounds how long a job that sorts ahead of that row can wait.
FULL_SCAN_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class ClaimScope:
    """What this daemon claims, and under which lease."""

    queues: tuple[str, ...]
    tasks: tuple[str, ...]
    max_attempts: tuple[int | None, ...]  # per task: its max_attempts override, None to keep the row's
    lease_seconds: float
    worker_id: uuid.UUID


class Claimer:
    """`on_claimed(claims, claimed_at)` receives each statement's jobs as soon as it returns (the prefetch
    buffer), so that runners start them at once and a failure of a later statement strands none."""

    def __init__(
        self,
        store: Store,
        scope: ClaimScope,
        leases: Leases,
        metrics: Metrics,
        on_claimed: Callable[[list[Claim], float], None],
    ) -> None:
        self._store = store
        self.scope = scope
        self._leases = leases
        self._metrics = metrics
        self._on_claimed = on_claimed
        self._after: dict[str, Position] = {}  # per queue, the last row claimed while draining
        self._full_scan_at = -math.inf
        # Lowered after a claim timed out; doubled back after each claim that did not.
        self._max_rows = math.inf
        self._max_bytes = math.inf
        self.filled = False  # the last claim stopped at its row count or its byte budget
        self._log = logs.get("claimer")

    async def claim(self, wanted: int, max_bytes: int) -> list[Claim]:
        """Claim up to `wanted` jobs, and beyond the first, payloads of at most about `max_bytes`;
        continuing after the previous claim's last row while a backlog drains; from the head of the
        queues at least once a second, and whenever a claim falls short. The leases are held from the
        moment the statement was sent. Returns what was claimed (already handed to `on_claimed`)."""
        wanted = int(min(wanted, self._max_rows))
        max_bytes = int(min(max_bytes, self._max_bytes))
        try:
            claims = await self._claim(wanted, max_bytes)
        except StatementTimeout:
            self._max_rows = max(1, wanted // 2)
            self._max_bytes = max(1, max_bytes // 2)
            self._log.warning("claim_timed_out", next_rows=self._max_rows, next_bytes=self._max_bytes)
            raise
        if self._max_rows < math.inf:
            self._max_rows *= 2
            self._max_bytes *= 2
            if self._max_rows >= 1_000_000:
                self._max_rows = self._max_bytes = math.inf
        return claims

    async def _claim(self, wanted: int, max_bytes: int) -> list[Claim]:
        claimed_at = time.monotonic()
        if claimed_at - self._full_scan_at >= FULL_SCAN_SECONDS:
            self._after.clear()
        from_position = bool(self._after)
        claims = await self._claim_once(wanted, max_bytes, claimed_at)
        self.filled = len(claims) == wanted or sum(c.size for c in claims) >= max_bytes
        if not self.filled and from_position:
            # Short after a position: rows may wait ahead of it (a higher priority, a backdated run_at).
            self._after.clear()
            more_bytes = max(max_bytes - sum(c.size for c in claims), 1)
            claims = claims + await self._claim_once(wanted - len(claims), more_bytes, time.monotonic())
            self.filled = len(claims) == wanted or sum(c.size for c in claims) >= max_bytes
        if not self.filled:
            self._after.clear()  # drained: the next claim starts from the head
        return claims

    async def next_run_delay(self) -> float | None:
        """Seconds until the earliest job of this scope becomes runnable; None when there is none."""
        return await self._store.next_run_delay(self.scope.queues, self.scope.tasks)

    async def _claim_once(self, wanted: int, max_bytes: int, claimed_at: float) -> list[Claim]:
        if not self._after:
            self._full_scan_at = claimed_at
        claims = await self._statement(wanted, max_bytes)
        self._metrics.claims.inc()
        self._metrics.claim_batch.observe(len(claims))
        for claim in claims:  # in claim order: the last one per queue is its position
            job = claim.job
            self._leases.add(job.id, claim.lease_token, claimed_at)
            self._metrics.for_job(job.queue, job.task).waited.observe(claim.waited)
            self._after[job.queue] = (job.priority, job.run_at, job.id)
        self._on_claimed(claims, claimed_at)
        return claims

    async def _statement(self, wanted: int, max_bytes: int) -> list[Claim]:
        s = self.scope
        starts = [self._after.get(q, (None, None, None)) for q in s.queues]
        if len(s.queues) == 1 and starts[0][0] is None:
            claims = await self._store.claim_head(
                s.queues[0], s.tasks, s.max_attempts, wanted, s.lease_seconds, s.worker_id, max_bytes
            )
        else:
            claims = await self._store.claim_jobs(
                s.queues, s.tasks, s.max_attempts, wanted, s.lease_seconds, s.worker_id, starts, max_bytes
            )
        claims.sort(key=lambda c: (-c.job.priority, c.job.run_at, c.job.id))
        return claims
