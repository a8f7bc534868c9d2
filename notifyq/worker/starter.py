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
"""

from __future__ import annotations

import asyncio

import anyio

from notifyq import logs
from notifyq.errors import DatabaseUnavailable, QueryError
from notifyq.models import Claim
from notifyq.store import Store


class Starter:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: list[tuple[Claim, asyncio.Future[bool]]] = []
        self._wake: asyncio.Future[None] | None = None
        self._log = logs.get("starter")

    async def begin(self, claim: Claim) -> bool:
        """True once the job's attempt is counted and it may run; False if it must not run (its lease
        is gone or ran out, or the database could not be asked): the caller gives it back."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((claim, future))
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        return await future

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Write the waiting requests, a batch at a time, until cancelled."""
        task_status.started()
        try:
            while True:
                if not self._pending:
                    self._wake = asyncio.get_running_loop().create_future()
                    await self._wake
                    continue
                batch, self._pending = self._pending, []
                # Row locks in id order, as the completer and the heartbeat take them: no deadlocks.
                batch.sort(key=lambda entry: entry[0].job.id)
                started = await self._write([claim for claim, _ in batch])
                for claim, future in batch:
                    if not future.done():
                        future.set_result(claim.job.id in started)
        finally:
            for _, future in self._pending:
                if not future.done():
                    future.set_result(False)
            self._pending = []

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
