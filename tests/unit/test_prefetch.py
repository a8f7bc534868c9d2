"""The prefetch buffer: its sizing rule, the stale give-back and the shutdown give-back (no database)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from datetime import UTC, datetime

import anyio
import pytest

from notifyq.metrics import Metrics
from notifyq.models import Claim, Job
from notifyq.registry import Registry
from notifyq.worker.executor import STUCK_SECONDS, Executor
from notifyq.worker.leases import Leases
from notifyq.worker.prefetch import PREFETCH_BYTES, STALE_BUFFER_SECONDS, Prefetch, prefetch_size

pytestmark = pytest.mark.timeout(10)


def _claims(n: int, start: int = 1) -> list[Claim]:
    now = datetime.now(UTC)
    out = []
    for i in range(start, start + n):
        token = uuid.uuid4()
        job = Job(i, "default", "t", {}, 1, 3, 0, now, now, token)
        out.append(Claim(job, token, size=2))
    return out


def _prefetch(minimum: int = 2, maximum: int = 100) -> Prefetch:
    return Prefetch(minimum, maximum, Metrics(["default"], ["t"], "test"))


def test_prefetch_size_follows_the_rate_within_its_bounds() -> None:
    def size(
        current: int, rate: float, payload: float = 10.0, backlog: bool = True, starved: bool = False
    ) -> int:
        return prefetch_size(
            current,
            10,
            500,
            rate=rate,
            claim_seconds=0.002,
            payload_bytes=payload,
            backlog=backlog,
            starved=starved,
        )

    assert size(10, rate=1_000) == 10  # 2 * 1,000/s * 2 ms = 4: never below the minimum
    assert size(10, rate=40_000) == 20  # wants 160, grows at most twofold per claim
    assert size(100, rate=40_000) == 160
    assert size(400, rate=1_000_000) == 500  # the maximum
    assert size(400, rate=1_000_000, payload=1024 * 1024) == 16  # PREFETCH_BYTES of 1 MiB payloads
    assert size(400, rate=1_000_000, payload=8 * 1024 * 1024) == 10  # the minimum wins over the budget
    assert size(400, rate=1_000_000, backlog=False) == 10  # a short claim: back to the minimum
    # Runners that found the buffer empty: double, whatever the rate says (quick small claims kept a
    # daemon woken by a burst at the minimum); and no shrinking while the backlog lasts.
    assert size(10, rate=1_000, starved=True) == 20
    assert size(400, rate=1_000, starved=True) == 500
    assert size(300, rate=1_000) == 300
    assert size(300, rate=1_000, payload=1024 * 1024) == 16  # except to fit the payload budget
    assert prefetch_size(0, 0, 500, rate=1e6, claim_seconds=1.0, payload_bytes=1.0, backlog=True) == 0


def test_room_and_claim_min_follow_the_size() -> None:
    p = _prefetch(minimum=10)
    assert (p.size, p.room, p.claim_min) == (10, 10, 5)
    p.add(_claims(4), claimed_at=0.0)
    assert (len(p), p.room) == (4, 6)


def test_stale_jobs_beyond_the_minimum_are_taken_out_newest_first() -> None:
    p = _prefetch(minimum=2)
    claims = _claims(5)
    p.add(claims, claimed_at=100.0)
    assert p.stale_at() == 100.0 + STALE_BUFFER_SECONDS
    assert p.take_stale(now=100.5) == []
    taken = p.take_stale(now=100.0 + STALE_BUFFER_SECONDS)
    assert [c.job.id for c in taken] == [5, 4, 3]
    assert [c.job.id for c in (p.pop(), p.pop())] == [1, 2]  # type: ignore[union-attr]
    assert p.size == 2 and p.stale_at() is None


def test_after_a_stale_give_back_starved_runners_grow_nothing_until_the_backlog_ends() -> None:
    """Slow jobs starve the runners too: doubling then would refill what take_stale just gave back, again
    and again (a review measured 60 jobs given back in 6 rounds over 10 s)."""

    async def main() -> None:
        p = _prefetch(minimum=2, maximum=100)

        async def starve() -> None:  # a runner finds the buffer empty
            with anyio.move_on_after(0.01):
                await p.wait()

        await starve()
        p.adapt(0, 0.001, backlog=True, payload_bytes=2.0)
        assert p.size == 4  # starved during a backlog: doubled
        p.add(_claims(4), claimed_at=0.0)
        assert len(p.take_stale(now=STALE_BUFFER_SECONDS)) == 2 and p.size == 2
        p.take_all()
        await starve()
        p.adapt(0, 0.001, backlog=True, payload_bytes=2.0)
        assert p.size == 2  # the jobs are slow, not the buffer small
        p.adapt(0, 0.001, backlog=False, payload_bytes=2.0)  # a short claim: the backlog is over
        await starve()
        p.adapt(0, 0.001, backlog=True, payload_bytes=2.0)
        assert p.size == 4

    anyio.run(main)


def test_remove_take_all_and_close_release_waiting_runners() -> None:
    async def main() -> None:
        p = _prefetch()
        claims = _claims(3)
        p.add(claims, claimed_at=0.0)
        assert p.remove(claims[1].job.id, claims[1].lease_token) is claims[1]
        assert p.remove(claims[1].job.id, uuid.uuid4()) is None
        assert p.take_all() == [claims[0], claims[2]]
        results: list[bool] = []
        async with anyio.create_task_group() as tg:

            async def runner() -> None:
                results.append(await p.wait())

            tg.start_soon(runner)
            tg.start_soon(runner)
            await anyio.wait_all_tasks_blocked()
            p.add(_claims(1, start=10), claimed_at=0.0)
            await anyio.wait_all_tasks_blocked()
            assert results == [True]
            assert p.pop() is not None
            p.close()
        assert results == [True, False]  # closed and empty: the second runner is told to stop

    anyio.run(main)


def test_the_buffer_counts_its_payload_bytes_and_leaves_room_for_one_claim() -> None:
    p = Prefetch(10, 100, Metrics(["q"], ["t"], "test"))
    big = [dataclasses.replace(c, size=6 * 1024 * 1024) for c in _claims(3)]
    p.add(big[:2], time.monotonic())
    assert p.bytes == 12 * 1024 * 1024 and p.bytes_room == PREFETCH_BYTES - p.bytes
    p.add(big[2:], time.monotonic())
    assert p.bytes_room == 1, "over the budget, a claim still takes one job"
    p.pop()
    assert p.remove(big[1].job.id, big[1].lease_token) is not None
    assert p.bytes == 6 * 1024 * 1024
    p.take_all()
    assert p.bytes == 0


def test_a_job_waiting_beside_a_free_runner_means_the_executor_is_stuck() -> None:
    metrics = Metrics(["q"], ["t"], "test")
    p = Prefetch(10, 100, metrics)
    # The executor's other parts are not used by stuck(): the buffer and the runners' count decide.
    executor = Executor(Registry(), p, None, None, Leases(), metrics, 4, lambda: None)  # type: ignore[arg-type]
    assert executor.stuck() is None
    p.add(_claims(1), time.monotonic() - 1)
    assert executor.stuck() is None, "a second is nothing"
    p.take_all()
    p.add(_claims(1), time.monotonic() - STUCK_SECONDS - 1)
    stuck = executor.stuck()
    assert stuck is not None and stuck.startswith(
        "executor stuck: a job has waited 31s beside 4 free runners"
    )
