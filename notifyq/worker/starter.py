"""Starts claimed jobs: moves this daemon's marks, so that rescue can tell which of its jobs began and
which ran, without a write per job.

The claim counts each job's attempt and numbers the job in this daemon's claim order (`claim_seq`;
sql/queries/worker.sql, claim_lease). Many claimed jobs wait in the prefetch buffer, and a daemon that
dies (SIGKILL, OOM, a handler calling os._exit) must not cost them an attempt. So before a handler is
called the daemon moves `begun_seq` on its own workers row past the job (move_marks); rescue refunds the
attempt of a job beyond it. One small row update covers many jobs: it is sent ahead of need, reaching as
far beyond the waiting runners as the last write let start, so that runners seldom wait for it. The
statement is refused while the daemon's last heartbeat is older than a lease, which keeps a daemon frozen
past its leases (SIGSTOP, a suspended VM) from starting jobs another daemon may have run meanwhile.

A mark that runs ahead covers jobs whose handlers were not called yet, and handlers are called one after
another, so a handler that ends the process takes jobs down begun but never run. So the daemon keeps a
second mark, `entered_seq`: every job up to it has had its handler called, or went back to the queue
(the completer says so once that write is done). It rides along with every mark write and heartbeat.
Rescue counts the attempt of a job up to it, and forgives once a job between the two marks (unclear).
A job forgiven before (`unclear_crashes` > 0) begins alone: only once every earlier job's handler was
called, with `begun_seq` moved to it exactly, and nothing after it begins until `entered_seq` covers it
in the database. If the process dies in between, that job is the only unclear one, and the next rescue
counts its attempt.

A claim the daemon never heard back from (it failed on its way back, or timed out on the client after
the server had run it) still moved the counter: the next claim shows the gap. Its rows go back to the
queue, attempt refunded, in the statement that first moves the mark past them.
"""

from __future__ import annotations

import asyncio
import heapq
import time
import uuid
from collections import deque

import anyio

from notifyq import logs
from notifyq.errors import DatabaseUnavailable, QueryError
from notifyq.models import Claim
from notifyq.store import Store

# The longest a job begun alone may hold other starts (waiting for earlier handlers to be called, then
# for its own mark): normally a round trip. Beyond it starts go on (a stuck runner must not stall them).
ALONE_SECONDS = 1.0


class Starter:
    def __init__(self, store: Store, worker_id: uuid.UUID, capacity: int) -> None:
        self._store = store
        self._worker_id = worker_id
        self._capacity = max(1, capacity)
        self.claimed = 0  # the highest claim_seq seen; this worker's claims are numbered from 1
        self.begun = 0  # begun_seq as last written
        self._written_entered = 0  # entered_seq as last written
        # Claimed jobs whose handler has not been called and that did not go back yet, by claim_seq: a
        # heap with lazy removal, and (job id, lease token) -> claim_seq for those still open.
        self._open: list[int] = []
        self._closed: set[int] = set()
        self._keys: dict[tuple[int, uuid.UUID], int] = {}
        # Jobs to begin alone that are not cleared yet (a heap of claim_seq), which of them are closed,
        # and since when each has been held up (waiting to begin, then begun and waiting for its mark).
        self._alone: list[int] = []
        self._alone_members: set[int] = set()
        self._alone_closed: set[int] = set()
        self._alone_since: dict[int, float] = {}
        self._lost: deque[tuple[int, int]] = deque()  # claim_seq ranges of claims never heard back
        self._waiting: dict[int, asyncio.Future[bool]] = {}  # by claim_seq
        self._ahead = 1  # how far beyond the waiting jobs the next write reaches
        self._begins = 0  # jobs begun since the last write came back: they size `_ahead`
        self._extend = False  # a runner came close to the mark: reach further before it waits
        self._wake: asyncio.Future[None] | None = None
        self._log = logs.get("starter")

    @property
    def entered_mark(self) -> int:
        """entered_seq as this daemon knows it: the job before the first still open, never beyond
        begun_seq (a job beyond it never began, whatever happened to it)."""
        while self._open and self._open[0] in self._closed:
            self._closed.discard(heapq.heappop(self._open))
        first_open = self._open[0] - 1 if self._open else self.claimed
        return min(first_open, self.begun)

    def claimed_jobs(self, claims: list[Claim]) -> None:
        """A claim came back (its jobs in claim order): they are open until their handlers are called."""
        if not claims:
            return
        first = claims[0].seq
        if first - 1 > self.claimed:
            # A claim since the last one moved the counter and never came back.
            self._lost.append((self.claimed + 1, first - 1))
            self._log.warning("claim_not_heard_back", first_seq=self.claimed + 1, last_seq=first - 1)
        for claim in claims:
            heapq.heappush(self._open, claim.seq)
            self._keys[(claim.job.id, claim.lease_token)] = claim.seq
            if claim.job.unclear_crashes:
                heapq.heappush(self._alone, claim.seq)
                self._alone_members.add(claim.seq)
        self.claimed = max(self.claimed, claims[-1].seq)
        if self._extend:
            self._kick()  # a runner came close to the mark while there was nothing further to cover

    async def begin(self, claim: Claim) -> bool:
        """True once the job may run (begun_seq covers it); False if it must not run (the mark was
        refused, or the database could not be asked): the caller gives it back. Either way the caller
        then calls `entered` for it."""
        seq = claim.seq
        self._begins += 1
        if seq <= self.begun:
            if self.begun - seq <= self._ahead // 2 and not self._extend:
                self._extend = True
                self._kick()
            return True
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting[seq] = future
        if seq in self._alone_members:
            self._alone_since[seq] = time.monotonic()
        self._kick()
        return await future

    def entered(self, job_id: int, token: uuid.UUID) -> None:
        """The job's handler is being called, or the job will not run here and is back in the queue (or
        its lease was found lost). Safe to call more than once, and for a job that was never begun."""
        seq = self._keys.pop((job_id, token), None)
        if seq is None:
            return
        self._closed.add(seq)
        if self._alone:
            if seq in self._alone_members:
                self._alone_closed.add(seq)
            self._kick()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Move the marks as runners need them, until cancelled."""
        task_status.started()
        try:
            while True:
                target = self._target()
                if target is not None or self._entered_due():
                    if await self._write(target):
                        continue
                    wait = 0.5  # refused or failed: not again at once
                else:
                    wait = self._alone_timeout()
                self._wake = asyncio.get_running_loop().create_future()
                with anyio.move_on_after(wait):
                    await self._wake
        finally:
            for future in self._waiting.values():
                if not future.done():
                    future.set_result(False)
            self._waiting.clear()

    def _kick(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _first_alone(self) -> int | None:
        """The first job still to begin alone, once those cleared are dropped: begun alone and covered
        by the entered_seq written, gone without being begun, or held up beyond ALONE_SECONDS."""
        while self._alone:
            seq = self._alone[0]
            begun = seq <= self.begun
            if (begun and self._written_entered >= seq) or (not begun and seq in self._alone_closed):
                pass
            elif self._alone_held(seq):
                self._log.warning("alone_start_held_up", claim_seq=seq, seconds=ALONE_SECONDS)
            else:
                return seq
            heapq.heappop(self._alone)
            self._alone_members.discard(seq)
            self._alone_closed.discard(seq)
            self._alone_since.pop(seq, None)
        return None

    def _alone_held(self, seq: int) -> bool:
        since = self._alone_since.get(seq)
        return since is not None and time.monotonic() - since > ALONE_SECONDS

    def _alone_timeout(self) -> float:
        if not self._alone or self._alone[0] not in self._alone_since:
            return float("inf")
        return max(0.0, self._alone_since[self._alone[0]] + ALONE_SECONDS - time.monotonic()) + 0.001

    def _target(self) -> int | None:
        """How far begun_seq should move now; None if not at all."""
        limit = self.claimed
        if len(self._lost) > 1:
            limit = min(limit, self._lost[1][0] - 1)  # one unheard claim released per statement
        alone = self._first_alone()
        if alone is not None:
            if alone <= self.begun:
                # Begun alone: nothing after it until entered_seq covers it (in this very write, if
                # its handler was called by now).
                if self.entered_mark < alone:
                    limit = min(limit, self.begun)
            elif alone in self._waiting and self.entered_mark >= alone - 1:
                limit = min(limit, alone)  # every earlier handler called: begin it, and it alone
                self._alone_since[alone] = time.monotonic()
            elif alone in self._waiting and self._alone_held(alone):
                limit = min(limit, alone)  # earlier handlers held up: begin it anyway
                self._alone_since[alone] = time.monotonic()
            else:
                limit = min(limit, alone - 1)
        if not self._waiting and not self._extend:
            return None
        want = max(max(self._waiting, default=0), self.begun) + self._ahead
        target = min(want, limit)
        return target if target > self.begun else None

    def _entered_due(self) -> bool:
        """A job begun alone whose handler was called, and entered_seq not yet written past it."""
        alone = self._first_alone()
        return alone is not None and alone <= self.begun and self.entered_mark >= alone

    async def _write(self, target: int | None) -> bool:
        """One move_marks statement; answers the runners it covers. False if refused or failed."""
        self._extend = False
        lost = self._lost[0] if self._lost and target is not None and target >= self._lost[0][0] else None
        marks: tuple[int, int] | None = None
        try:
            # Shielded: once sent, the answer decides whether the waiting jobs run or go back.
            with anyio.CancelScope(shield=True):
                marks = await self._store.move_marks(self._worker_id, target, self.entered_mark, lost)
            if marks is None:
                self._log.warning(
                    "jobs_not_started", jobs=len(self._waiting), reason="heartbeat older than a lease"
                )
        except (DatabaseUnavailable, QueryError) as exc:
            # Not retried: the waiting jobs go back unstarted (the completer retries that write), and a
            # database that is away stops the claims anyway.
            self._log.warning("jobs_not_started", jobs=len(self._waiting), error=str(exc))
        if marks is None:
            for future in self._waiting.values():
                if not future.done():
                    future.set_result(False)
            self._waiting.clear()
            return False
        if lost is not None:
            self._lost.popleft()
        self.begun = max(self.begun, marks[0])
        self._written_entered = max(self._written_entered, marks[1])
        for seq in [seq for seq in self._waiting if seq <= self.begun]:
            future = self._waiting.pop(seq)
            if not future.done():
                future.set_result(True)
        self._ahead = min(max(2 * self._begins, 1), self._capacity)
        self._begins = 0
        return True
