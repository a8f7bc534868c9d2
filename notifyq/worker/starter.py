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

A batch's handlers then start one after another, so a handler that kills the process before it yields
(os._exit, a crashing extension) takes the rest of its batch down begun but never run. Rescue cannot
tell them apart, so it forgives the first crash a job is part of and counts it in `crashes`
(sql/queries/worker.sql, rescue_expired). A job that crashed before is begun here alone, and nothing else
is begun until its handler is under way (`entered`): if the process dies in between, that job is the
one that killed it, and the next rescue counts its attempt.
"""

from __future__ import annotations

import asyncio

import anyio

from notifyq import logs
from notifyq.errors import DatabaseUnavailable, QueryError
from notifyq.models import Claim
from notifyq.store import Store

# At most this long without other starts while a job that crashed before gets under way: its handler
# normally yields within microseconds; a sync one holds the gate until its thread returns, up to this.
ALONE_SECONDS = 1.0

Pending = tuple[Claim, asyncio.Future[bool]]


class Starter:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: list[Pending] = []
        self._wake: asyncio.Future[None] | None = None
        self._alone: tuple[int, asyncio.Future[None]] | None = None  # a crashed-before job getting going
        self._log = logs.get("starter")

    async def begin(self, claim: Claim) -> bool:
        """True once the job's attempt is counted and it may run; False if it must not run (its lease
        is gone or ran out, or the database could not be asked): the caller gives it back."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((claim, future))
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        return await future

    def entered(self, job_id: int) -> None:
        """The job's handler is under way (or will never be): starts may go on."""
        if self._alone is not None and self._alone[0] == job_id and not self._alone[1].done():
            self._alone[1].set_result(None)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Write the waiting requests, a batch at a time, until cancelled."""
        task_status.started()
        try:
            while True:
                if not self._pending:
                    self._wake = asyncio.get_running_loop().create_future()
                    await self._wake
                    continue
                batch = self._next_batch()
                started = await self._write([claim for claim, _ in batch])
                for claim, future in batch:
                    if not future.done():
                        future.set_result(claim.job.id in started)
                if len(batch) == 1 and batch[0][0].job.crashes and batch[0][0].job.id in started:
                    await self._wait_alone(*batch[0])
        finally:
            for _, future in self._pending:
                if not future.done():
                    future.set_result(False)
            self._pending = []

    def _next_batch(self) -> list[Pending]:
        """Every waiting request, or a job that crashed before on its own."""
        for n, (claim, future) in enumerate(self._pending):
            if claim.job.crashes and not future.done():
                del self._pending[n]
                return [(claim, future)]
        batch, self._pending = self._pending, []
        # Row locks in id order, as the completer and the heartbeat take them: no deadlocks.
        batch.sort(key=lambda entry: entry[0].job.id)
        return batch

    async def _wait_alone(self, claim: Claim, future: asyncio.Future[bool]) -> None:
        if future.cancelled():  # its runner is gone (shutdown): the job goes back, never runs
            return
        gate = asyncio.get_running_loop().create_future()
        self._alone = (claim.job.id, gate)
        try:
            with anyio.move_on_after(ALONE_SECONDS):
                await gate
        finally:
            self._alone = None

    async def _write(self, claims: list[Claim]) -> set[int]:
        started: set[int] = set()
        try:
            # Shielded: once sent, the answer decides whether a counted attempt runs or is given back.
            with anyio.CancelScope(shield=True):
                started = await self._store.begin(claims)
        except (DatabaseUnavailable, QueryError) as exc:
            # Not retried: each job goes back unstarted (the completer retries that write), and a
            # database that is away stops the claims anyway.
            self._log.warning("jobs_not_started", jobs=len(claims), error=str(exc))
        return started
