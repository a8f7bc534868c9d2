"""The executor's start step, driven exactly: a job runs only once the starter has counted its attempt,
and a job it refuses goes back unstarted. The starter and the completer here are stand-ins that answer
from a script and record what they were given; the statements themselves run against real Postgres in
tests/integration/test_fences.py (begin_jobs) and in the fault suite (tests/faults/test_hostile.py)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest

from notifyq import Job, Registry
from notifyq.metrics import Metrics
from notifyq.models import Claim, Outcome, OutcomeKind
from notifyq.worker.executor import Executor
from notifyq.worker.leases import Leases
from notifyq.worker.prefetch import Prefetch

pytestmark = pytest.mark.timeout(10)


class Starter:
    """Starts the jobs whose ids are in `allowed`."""

    def __init__(self, allowed: set[int]) -> None:
        self.allowed = allowed
        self.asked: list[int] = []

    async def begin(self, claim: Claim) -> bool:
        self.asked.append(claim.job.id)
        return claim.job.id in self.allowed

    def entered(self, job_id: int, token: uuid.UUID) -> None:
        pass

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await anyio.sleep_forever()


class Completer:
    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def put(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    async def wait_room(self) -> None:
        return None


def _claim(job_id: int) -> Claim:
    now = datetime.now(UTC)
    token = uuid.uuid4()
    return Claim(Job(job_id, "default", "t", {}, 1, 3, 0, now, now, token), token)


def run(allowed: set[int], confirmed_ago: dict[int, float]) -> tuple[Starter, Completer, list[int]]:
    """Run one claim per job id in `confirmed_ago` (seconds since its lease was last confirmed) on two
    runners whose starter starts the ids in `allowed`; the self-fence is 10 s. Returns the stand-ins
    and the ids whose handler ran."""
    ran: list[int] = []
    registry = Registry()

    @registry.task("t")
    async def handler(job: Job) -> None:
        ran.append(job.id)

    starter, completer = Starter(allowed), Completer()

    async def main() -> None:
        metrics = Metrics(["default"], ["t"], "test")
        prefetch = Prefetch(10, 10, metrics)
        leases = Leases(fence_after=10.0)
        executor = Executor(registry, prefetch, starter, completer, leases, metrics, 2, lambda: None)  # type: ignore[arg-type]
        claims = [_claim(i) for i in confirmed_ago]
        for claim in claims:
            leases.add(claim.job.id, claim.lease_token, time.monotonic() - confirmed_ago[claim.job.id])
        prefetch.add(claims, 0.0)
        prefetch.close()
        with anyio.fail_after(5):
            await executor.run()

    anyio.run(main)
    return starter, completer, ran


def test_a_job_runs_only_once_its_attempt_is_counted_and_a_refused_one_goes_back_unstarted() -> None:
    starter, completer, ran = run({1, 3}, {1: 0.0, 2: 0.0, 3: 0.0})
    assert sorted(starter.asked) == [1, 2, 3]
    assert sorted(ran) == [1, 3], "the refused job never reached its handler"
    kinds = {o.job_id: o.kind for o in completer.outcomes}
    assert kinds == {1: OutcomeKind.SUCCEEDED, 2: OutcomeKind.UNSTARTED, 3: OutcomeKind.SUCCEEDED}


def test_a_begun_job_whose_lease_went_unconfirmed_too_long_is_not_run() -> None:
    """The loop was held up between a job's begin and its turn (a handler blocking the loop, a frozen
    process) for longer than the heartbeat's self-fence: its lease may have run out and the job be
    running elsewhere, so it goes back unstarted (a write fenced by its token) instead of running."""
    _, completer, ran = run({1, 2}, {1: 0.0, 2: 11.0})  # job 2 last confirmed 11 s ago
    assert ran == [1]
    kinds = {o.job_id: o.kind for o in completer.outcomes}
    assert kinds == {1: OutcomeKind.SUCCEEDED, 2: OutcomeKind.UNSTARTED}
