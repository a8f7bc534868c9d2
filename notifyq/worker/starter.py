"""Starts claimed jobs: counts each job's attempt in the database right before its handler runs.

A claim only reserves jobs (sql/queries/worker.sql, claim_lease): many of them wait in the prefetch
buffer, and a daemon that dies (SIGKILL, OOM, a handler calling os._exit) must not cost them an attempt
or fail them for a crash they took no part in. So a runner asks here before it runs a job, and the job
runs only once `begin_jobs` has counted its attempt, fenced by its lease token and by a lease that has
not run out. That also stops a daemon frozen past its leases (SIGSTOP, a long GC pause, a suspended VM)
from starting buffered jobs another daemon may have run meanwhile. A job that kills its worker has its
attempt counted before it ran, so it cannot retry forever.

Runners ask at once and one statement answers them all: every request made while a write is on its way
goes into the next one, so under load the cost is one statement per batch, not per job.

A batch's handlers are then called one after another, so a handler that ends the process before it
yields (os._exit, a crashing extension) takes the rest of its batch down begun but never run. So the
daemon keeps a mark, `entered_through`: the start time up to which every job it began has had its
handler called (or was given back). It travels with the next begin statement and with the heartbeat,
and rescue counts the attempt of a job started at or before it, and forgives (once) one started after
it (sql/queries/worker.sql, rescue_expired). A job forgiven before (`unclear_crashes` > 0) is begun in
a statement of its own once every earlier start is covered by the mark, and nothing else is begun until
the mark covers it too: if the process dies in between, that job is the only one whose start is
unclear, and the next rescue counts its attempt.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

import anyio

from notifyq import logs
from notifyq.errors import DatabaseUnavailable, QueryError
from notifyq.models import Claim
from notifyq.store import Store

# The longest a job begun alone may hold other starts while its handler gets called and the mark is
# written: normally one round trip. Beyond it starts go on (a stuck runner must not stall the daemon).
ALONE_SECONDS = 1.0

Pending = tuple[Claim, asyncio.Future[bool]]


@dataclass(slots=True)
class _Batch:
    """Jobs begun by one statement whose handlers have not all been called (or given back) yet."""

    started_at: datetime
    open: set[int]
    done: anyio.Event = field(default_factory=anyio.Event)


class Starter:
    def __init__(self, store: Store, worker_id: uuid.UUID) -> None:
        self._store = store
        self._worker_id = worker_id
        self._pending: list[Pending] = []
        self._wake: asyncio.Future[None] | None = None
        self._batches: deque[_Batch] = deque()  # in the order begun
        # job id -> (lease token, its batch) until its handler is called: a stale run's word, under an
        # older token, must not close a newer start of the same job.
        self._open: dict[int, tuple[uuid.UUID, _Batch]] = {}
        self.entered_through: datetime | None = None  # the mark, as this daemon knows it
        self._log = logs.get("starter")

    async def begin(self, claim: Claim) -> bool:
        """True once the job's attempt is counted and it may run; False if it must not run (its lease
        is gone or ran out, or the database could not be asked): the caller gives it back. Either way
        the caller then calls `entered` for it."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((claim, future))
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        return await future

    def entered(self, job_id: int, token: uuid.UUID) -> None:
        """The job's handler is being called, or the job will not run here and its attempt has been
        given back (the completer says so once the write is done: before that, the mark must not cover
        it). Safe to call more than once, and for a job that was never begun."""
        held = self._open.get(job_id)
        if held is None or held[0] != token:
            return
        del self._open[job_id]
        batch = held[1]
        batch.open.discard(job_id)
        if batch.open:
            return
        batch.done.set()
        while self._batches and not self._batches[0].open:
            self.entered_through = self._batches.popleft().started_at

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Write the waiting requests, a batch at a time, until cancelled."""
        task_status.started()
        try:
            while True:
                if not self._pending:
                    self._wake = asyncio.get_running_loop().create_future()
                    await self._wake
                    continue
                alone = self._next_alone()
                if alone is not None:
                    await self._begin_alone(*alone)
                    continue
                batch, self._pending = self._pending, []
                # Row locks in id order, as the completer and the heartbeat take them: no deadlocks.
                batch.sort(key=lambda entry: entry[0].job.id)
                await self._begin(batch)
        finally:
            for _, future in self._pending:
                if not future.done():
                    future.set_result(False)
            self._pending = []

    def _next_alone(self) -> Pending | None:
        """A waiting job that was forgiven an unclear crash before: it is begun on its own."""
        for n, (claim, future) in enumerate(self._pending):
            if claim.job.unclear_crashes and not future.done():
                del self._pending[n]
                return claim, future
        return None

    async def _begin_alone(self, claim: Claim, future: asyncio.Future[bool]) -> None:
        # Every earlier start covered by the mark first (their handlers are normally being called by
        # now), so that if the process dies before the mark covers this job too, it alone is unclear.
        with anyio.move_on_after(ALONE_SECONDS):
            for earlier in list(self._batches):
                await earlier.done.wait()
        batch = await self._begin([(claim, future)])
        if batch is None:
            return
        with anyio.move_on_after(ALONE_SECONDS):
            await batch.done.wait()
            if self.entered_through is not None:
                try:
                    with anyio.CancelScope(shield=True):
                        await self._store.mark_entered(self._worker_id, self.entered_through)
                except (DatabaseUnavailable, QueryError) as exc:
                    # Safe: the mark only lags (a crash now leaves this job unclear, and counted).
                    self._log.warning("mark_not_written", error=str(exc))

    async def _begin(self, batch: list[Pending]) -> _Batch | None:
        """One begin statement for `batch`; answers each request. The batch's record, if any started."""
        started: set[int] = set()
        started_at: datetime | None = None
        try:
            # Shielded: once sent, the answer decides whether a counted attempt runs or is given back.
            with anyio.CancelScope(shield=True):
                started, started_at = await self._store.begin(
                    [claim for claim, _ in batch], self._worker_id, self.entered_through
                )
        except (DatabaseUnavailable, QueryError) as exc:
            # Not retried: each job goes back unstarted (the completer retries that write), and a
            # database that is away stops the claims anyway.
            self._log.warning("jobs_not_started", jobs=len(batch), error=str(exc))
        record: _Batch | None = None
        if started and started_at is not None:
            record = _Batch(started_at, set(started))
            self._batches.append(record)
            for claim, _ in batch:
                if claim.job.id in started:
                    self._open[claim.job.id] = (claim.lease_token, record)
        for claim, future in batch:
            if not future.done():
                future.set_result(claim.job.id in started)
            elif claim.job.id in started:
                # Its runner is gone (shutdown): it will not run here, and its give-back is on its way.
                self.entered(claim.job.id, claim.lease_token)
        return record
