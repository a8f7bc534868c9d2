"""The claimer's bookkeeping: positions, the scan from the head, and that each statement's jobs reach the
buffer at once. The statements themselves run against real Postgres in tests/integration (test_plans,
test_fences) and in the state machine; here a stand-in store returns prepared claims in order, so that
the control flow can be driven exactly, including a failure of the second statement."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from notifyq.errors import DatabaseUnavailable, StatementTimeout
from notifyq.metrics import Metrics
from notifyq.models import Claim, Job
from notifyq.worker.claimer import Claimer, ClaimScope
from notifyq.worker.leases import Leases

pytestmark = pytest.mark.timeout(10)
T0 = datetime(2030, 1, 1, tzinfo=UTC)
BYTES = 16 * 1024 * 1024


def _claims(ids: range) -> list[Claim]:
    out = []
    for i in ids:
        token = uuid.uuid4()
        out.append(Claim(Job(i, "default", "t", {}, 1, 3, 0, T0 + timedelta(seconds=i), T0, token), token))
    return out


class Statements:
    """Answers claim statements from a script: each entry is claims to return or an error to raise."""

    def __init__(self, *script: list[Claim] | Exception) -> None:
        self.script = list(script)
        self.calls: list[tuple[str, Any]] = []
        self.sizes: list[tuple[int, int]] = []  # (rows, bytes) each statement was asked for

    async def _next(self, name: str, after: Any, limit: int, max_bytes: int) -> list[Claim]:
        self.calls.append((name, after))
        self.sizes.append((limit, max_bytes))
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    async def claim_head(self, queue: str, *args: Any) -> list[Claim]:
        return await self._next("head", None, args[2], args[-1])

    async def claim_jobs(self, queues: Any, *args: Any) -> list[Claim]:
        return await self._next("jobs", args[-2], args[2], args[-1])


def _claimer(store: Statements, buffered: list[Claim]) -> tuple[Claimer, Leases]:
    scope = ClaimScope(("default",), ("t",), (None,), 30.0, uuid.uuid4())
    leases = Leases()
    claimer = Claimer(
        store, scope, leases, Metrics(["default"], ["t"], "test"), lambda c, _: buffered.extend(c)
    )  # type: ignore[arg-type]
    return claimer, leases


def test_a_backlog_is_claimed_after_the_last_row_and_from_the_head_when_short() -> None:
    async def main() -> None:
        first, second, short, head = (
            _claims(range(1, 5)),
            _claims(range(5, 9)),
            _claims(range(9, 10)),
            _claims(range(20, 22)),
        )
        store = Statements(first, second, short, head)
        buffered: list[Claim] = []
        claimer, _ = _claimer(store, buffered)
        assert await claimer.claim(4, BYTES) == first
        assert await claimer.claim(4, BYTES) == second
        assert (
            await claimer.claim(4, BYTES) == short + head
        )  # short after a position: the head is scanned too
        names = [name for name, _ in store.calls]
        assert names == ["head", "jobs", "jobs", "head"]
        assert store.calls[1][1] == [(0, T0 + timedelta(seconds=4), 4)]  # after the last row claimed
        assert buffered == first + second + short + head

    anyio.run(main)


def test_a_failed_second_statement_strands_nothing_the_first_claimed() -> None:
    async def main() -> None:
        first, short = _claims(range(1, 5)), _claims(range(5, 6))
        store = Statements(first, short, DatabaseUnavailable("gone"))
        buffered: list[Claim] = []
        claimer, leases = _claimer(store, buffered)
        await claimer.claim(4, BYTES)
        with pytest.raises(DatabaseUnavailable):
            await claimer.claim(4, BYTES)
        # The short claim's job holds a lease, and it is in the buffer for a runner: not held for nothing.
        assert buffered == first + short
        assert set(leases.snapshot()) == {c.job.id for c in first + short}

    anyio.run(main)


def test_a_claim_that_timed_out_halves_the_next_ones_and_grows_back() -> None:
    async def main() -> None:
        store = Statements(StatementTimeout("slow"), StatementTimeout("slow"), [], [], [])
        claimer, _ = _claimer(store, [])
        for _ in range(2):
            with pytest.raises(StatementTimeout):
                await claimer.claim(100, BYTES)
        for _ in range(3):
            await claimer.claim(100, BYTES)
        assert store.sizes == [
            (100, BYTES),
            (50, BYTES // 2),
            (25, BYTES // 4),
            (50, BYTES // 2),
            (100, BYTES),
        ]

    anyio.run(main)
