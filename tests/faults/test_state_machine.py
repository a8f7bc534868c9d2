"""A Hypothesis state machine over the job lifecycle, against real Postgres, with time passed in.

Rules drive the daemon's own named statements (claim, heartbeat, record outcomes, rescue) and the
producer/admin ones (enqueue, cancel, retry) while a model predicts every row. The clock only moves when
the `advance` rule says so: every statement reads `notifyq.now()`, which this session pins with
`SET notifyq.now`. After each step the table must equal the model, which checks the invariants: a
claim takes exactly the runnable jobs in (priority, run_at, id) order; attempts count at claim; only
the current lease token can heartbeat or finish a job (stale tokens write nothing); rescue takes
exactly the expired leases and fails jobs that are out of attempts.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from notifyq import queries

pytestmark = pytest.mark.timeout(600)
LEASE = 30.0
WORKERS = [uuid.UUID(int=1), uuid.UUID(int=2)]


@dataclass
class Model:
    state: str
    attempts: int
    max_attempts: int
    run_at: datetime
    priority: int = 0
    token: uuid.UUID | None = None
    leased_until: datetime | None = None


class JobLifecycle(RuleBasedStateMachine):
    dsn: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection = self.run(asyncpg.connect(self.dsn))
        self.clock = datetime(2030, 1, 1, tzinfo=UTC)
        self.jobs: dict[int, Model] = {}
        self.stale: list[tuple[int, uuid.UUID]] = []

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.conn.close())
        self.loop.close()

    @initialize()
    def reset(self) -> None:
        self.run(self.conn.execute("TRUNCATE notifyq.jobs, notifyq.workers RESTART IDENTITY"))
        self.set_clock()

    def set_clock(self) -> None:
        self.run(self.conn.execute(f"SET notifyq.now = '{self.clock.isoformat()}'"))

    # -- rules --------------------------------------------------------------------------------

    @rule(run_in=st.sampled_from([0, 10, 100]), max_attempts=st.integers(1, 3), priority=st.integers(0, 2))
    def enqueue(self, run_in: int, max_attempts: int, priority: int) -> None:
        job_id = self.run(
            self.conn.fetchval(
                queries.get("enqueue"),
                "t",
                "{}",
                "default",
                None,
                priority,
                None,
                max_attempts,
                timedelta(seconds=run_in),
            )
        )
        self.jobs[job_id] = Model("queued", 0, max_attempts, self.clock + timedelta(seconds=run_in), priority)

    @rule(worker=st.sampled_from(WORKERS), n=st.integers(1, 3))
    def claim(self, worker: uuid.UUID, n: int) -> None:
        runnable = sorted(
            (j for j in self.jobs.items() if j[1].state == "queued" and j[1].run_at <= self.clock),
            key=lambda item: (-item[1].priority, item[1].run_at, item[0]),
        )[:n]
        rows = self.run(
            self.conn.fetch(
                queries.get("claim_jobs"),
                ["default"],
                ["t"],
                [None],
                n,
                LEASE,
                worker,
                [None],
                [None],
                [None],
            )
        )
        assert sorted(r["id"] for r in rows) == sorted(i for i, _ in runnable)
        for r in rows:
            m = self.jobs[r["id"]]
            m.state, m.attempts, m.token = "running", m.attempts + 1, r["lease_token"]
            m.leased_until = self.clock + timedelta(seconds=LEASE)
            assert r["attempts"] == m.attempts

    @precondition(lambda self: self.running())
    @rule(data=st.data(), worker=st.sampled_from(WORKERS))
    def heartbeat(self, data: st.DataObject, worker: uuid.UUID) -> None:
        held = {i: m.token for i, m in self.running()}
        extra = data.draw(st.sampled_from(self.stale)) if self.stale else None
        ask = dict(held)
        if extra:
            # A stale token: for a finished job, or in place of the current token of a job that is
            # running again under a new lease. Either way it must not extend anything.
            ask[extra[0]] = extra[1]
            if held.get(extra[0]) != extra[1]:
                held.pop(extra[0], None)
        rows = self.run(
            self.conn.fetch(
                queries.get("extend_leases"),
                list(ask),
                list(ask.values()),
                LEASE,
                worker,
                "host",
                1,
                ["default"],
                ["t"],
                1,
            )
        )
        assert {r["id"] for r in rows} == set(held), "exactly the current tokens are extended"
        for i in held:
            self.jobs[i].leased_until = self.clock + timedelta(seconds=LEASE)

    @precondition(lambda self: self.running())
    @rule(
        data=st.data(), kind=st.sampled_from(["succeeded", "fail", "snooze"]), delay=st.sampled_from([0, 5])
    )
    def finish(self, data: st.DataObject, kind: str, delay: int) -> None:
        job_id, m = data.draw(st.sampled_from(self.running()))
        if kind == "succeeded":
            state, refund = "succeeded", 0
        elif kind == "snooze":
            state, refund = "queued", 1
        else:
            state, refund = ("failed", 0) if m.attempts >= m.max_attempts else ("queued", 0)
        written = self.record(job_id, m.token, state, delay, refund)
        assert written == {job_id}
        self.stale.append((job_id, m.token))  # type: ignore[arg-type]
        m.state, m.attempts, m.token, m.leased_until = state, m.attempts - refund, None, None
        if state == "queued":
            m.run_at = self.clock + timedelta(seconds=delay)

    @precondition(lambda self: self.stale)
    @rule(data=st.data())
    def stale_write(self, data: st.DataObject) -> None:
        job_id, token = data.draw(st.sampled_from(self.stale))
        if self.jobs[job_id].token == token:
            return
        assert self.record(job_id, token, "succeeded", 0, 0) == set(), "a stale lease writes nothing"

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        if not self.jobs:
            return
        job_id = data.draw(st.sampled_from(sorted(self.jobs)))
        state = self.run(self.conn.fetchval(queries.get("cancel_job"), job_id))
        m = self.jobs[job_id]
        if m.state == "queued":
            m.state = "cancelled"
        assert state == m.state

    @rule(data=st.data())
    def admin_retry(self, data: st.DataObject) -> None:
        if not self.jobs:
            return
        job_id = data.draw(st.sampled_from(sorted(self.jobs)))
        state = self.run(self.conn.fetchval(queries.get("retry_job"), job_id))
        m = self.jobs[job_id]
        if m.state in ("failed", "cancelled"):
            m.state, m.attempts, m.run_at = "queued", 0, self.clock
        assert state == m.state

    @rule()
    def rescue(self) -> None:
        rows = self.run(self.conn.fetch(queries.get("rescue_expired"), 1000))
        expired = {i for i, m in self.running() if m.leased_until and m.leased_until < self.clock}
        assert {r["id"] for r in rows} == expired
        for job_id in expired:
            m = self.jobs[job_id]
            self.stale.append((job_id, m.token))  # type: ignore[arg-type]
            m.state = "failed" if m.attempts >= m.max_attempts else "queued"
            m.token, m.leased_until, m.run_at = None, None, self.clock

    @rule(seconds=st.sampled_from([1, 10, 29, 30, 31, 100]))  # the lease is 30 s: probe its edge
    def advance(self, seconds: int) -> None:
        self.clock += timedelta(seconds=seconds)
        self.set_clock()

    # -- helpers and the invariant --------------------------------------------------------------

    def running(self) -> list[tuple[int, Model]]:
        return [(i, m) for i, m in sorted(self.jobs.items()) if m.state == "running"]

    def record(self, job_id: int, token: uuid.UUID | None, state: str, delay: float, refund: int) -> set[int]:
        rows = self.run(
            self.conn.fetch(
                queries.get("record_outcomes"),
                [job_id],
                [token],
                [state],
                [float(delay)],
                [refund],
                [None],
                [None],
            )
        )
        return {r["id"] for r in rows}

    @invariant()
    def table_matches_model(self) -> None:
        rows = self.run(
            self.conn.fetch(
                "SELECT id, state::text, attempts, max_attempts, run_at, lease_token, leased_until"
                " FROM notifyq.jobs"
            )
        )
        assert {r["id"] for r in rows} == set(self.jobs)
        for r in rows:
            m = self.jobs[r["id"]]
            assert (r["state"], r["attempts"], r["max_attempts"]) == (m.state, m.attempts, m.max_attempts), r[
                "id"
            ]
            assert r["lease_token"] == m.token and r["leased_until"] == m.leased_until
            if m.state == "queued":
                assert r["run_at"] == m.run_at
            assert r["attempts"] <= r["max_attempts"] or r["state"] != "queued"


def test_job_lifecycle_state_machine(db_dsn: str, soak: bool) -> None:
    JobLifecycle.dsn = db_dsn
    machine = settings(
        max_examples=1000 if soak else 150,
        stateful_step_count=60 if soak else 30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )(JobLifecycle)
    machine.TestCase().runTest()
