"""A Hypothesis state machine over the job lifecycle, against real Postgres, with time passed in.

Rules drive the daemon's own named statements (`claim_head`, `claim_jobs`, `begin_jobs`,
`extend_leases`, `complete_succeeded`, `record_outcomes`, `rescue_expired`) and the producer/operator ones (enqueue,
cancel, retry) over two queues and two tasks, while a model predicts every column the lifecycle writes
of every row. The clock only moves when the `advance` rule says so: every statement reads
`notifyq.now()`, which this session pins with `SET notifyq.now`. After each step the table must equal
the model, which checks the invariants:

- a claim takes exactly the runnable jobs of its queues and tasks, best (priority desc, run_at, id)
  first: `claim_head` from the head of one queue; `claim_jobs` over one or both queues, each from its
  head or after a position (the previous claim's last row there, or any job's key): the same priority
  strictly after (run_at, id), then the lower priorities, never a higher one;
- a claim reserves (no attempt counted); `begin_jobs` counts the attempt, once, only under the current
  token of a lease that has not run out; a row that did not set max_attempts takes its task's override
  (else the default) at its first claim, and a row that did keeps its own;
- only the current lease token heartbeats or finishes a job: in a batch the current tokens write and the
  wrong ones (stale, or another job's) write nothing, whatever else the batch holds;
- rescue takes exactly the expired leases (lowest ids first, up to its limit), puts a job that never
  started back as it was, forgives a started job's first crash (its attempt given back, `crashes`
  counted) and fails a started job that crashed before and is out of attempts; an attempt is given back
  only if it was counted.

`NOTIFYQ_STATE_MACHINE_EXAMPLES` sets the number of examples (60 in the suite, 1,000 with --soak; the
mutation gate runs 40), and
`NOTIFYQ_STATE_MACHINE_SHRINK=0` skips shrinking a failure.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from notifyq import queries

pytestmark = pytest.mark.timeout(600)
LEASE = 30.0
WORKERS = [uuid.UUID(int=1), uuid.UUID(int=2)]
QUEUES = ["default", "other"]
TASKS = ["t", "u"]
# Both orders of both lists: the override must follow its task, not its position in the arrays.
QUEUE_SETS = [["default"], ["other"], ["default", "other"], ["other", "default"]]
TASK_SETS = [["t"], ["u"], ["t", "u"], ["u", "t"]]
OVERRIDES = st.sampled_from([None, 1, 2, 5])
DEFAULT_MAX_ATTEMPTS = 20  # notifyq.default_max_attempts()
NO_BYTE_BUDGET = (
    1 << 40
)  # the claims' byte budget, too large to bind (tests/integration/test_plans covers it)
# A job to enqueue: run_in (-5: backdated, so it sorts before rows already claimed), max_attempts,
# priority, queue, task.
JOBS = st.tuples(
    st.sampled_from([-5, 0, 10, 100]),
    st.one_of(st.none(), st.integers(1, 3)),
    st.integers(0, 2),
    st.sampled_from(QUEUES),
    st.sampled_from(TASKS),
)
FORGIVEN = " (not counted: it may never have started; it starts alone from now on)"
# A worker's entered_through mark as a begin or a heartbeat sends it: none, or some seconds ago.
MARK_AGO = st.sampled_from([None, 0, 1, 10, 30])
# What a worker reports per job. "succeeded" with no result is a plain success (complete_succeeded),
# "result" a success with one; "error" retries while attempts remain and fails after; "failed" is a
# permanent failure; "snooze" gives the attempt back.
KINDS = ["succeeded", "result", "error", "failed", "snooze"]

Position = tuple[int, datetime, int]
COLUMNS = (
    "state::text",
    "attempts",
    "max_attempts",
    "run_at",
    "priority",
    "queue",
    "task",
    "lease_token",
    "leased_until",
    "worker_id",
    "started_at",
    "finished_at",
    "last_error",
    "result::text",
    "unclear_crashes",
)


@dataclass(frozen=True)
class Outcome:
    id: int
    token: uuid.UUID | None
    state: str
    delay: int
    refund: int
    error: str | None
    result: str | None


@dataclass
class Model:
    state: str
    attempts: int
    max_attempts: int | None
    run_at: datetime
    priority: int = 0
    queue: str = "default"
    task: str = "t"
    token: uuid.UUID | None = None
    leased_until: datetime | None = None
    worker: uuid.UUID | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    result: str | None = None
    unclear_crashes: int = 0


def order(item: tuple[int, Model]) -> tuple[int, datetime, int]:
    job_id, m = item
    return (-m.priority, m.run_at, job_id)


class JobLifecycle(RuleBasedStateMachine):
    # One connection for every example (the test opens it): a connection per example, and with it
    # preparing every statement again, was most of an example's cost.
    loop: asyncio.AbstractEventLoop
    conn: asyncpg.Connection

    def __init__(self) -> None:
        super().__init__()
        self.clock = datetime(2030, 1, 1, tzinfo=UTC)
        self.jobs: dict[int, Model] = {}
        self.stale: list[tuple[int, uuid.UUID]] = []
        self.after: dict[str, Position] = {}  # per queue, the last row of the latest claim there
        self.marks: dict[uuid.UUID, datetime | None] = {}  # workers rows that exist: their mark

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @initialize(backlog=st.lists(JOBS, max_size=8))
    def reset(self, backlog: list[tuple[int, int | None, int, str, str]]) -> None:
        # DELETE, not TRUNCATE: on a table this small it is a fifth of the cost.
        self.run(
            self.conn.execute(
                "DELETE FROM notifyq.jobs; DELETE FROM notifyq.workers;"
                " ALTER TABLE notifyq.jobs ALTER COLUMN id RESTART"
            )
        )
        self.set_clock()
        for job in backlog:
            self.add(*job)

    def set_clock(self) -> None:
        self.run(self.conn.execute(f"SET notifyq.now = '{self.clock.isoformat()}'"))

    # -- rules --------------------------------------------------------------------------------

    @rule(jobs=st.lists(JOBS, min_size=1, max_size=3))
    def enqueue(self, jobs: list[tuple[int, int | None, int, str, str]]) -> None:
        for job in jobs:
            self.add(*job)

    @rule(
        data=st.data(),
        worker=st.sampled_from(WORKERS),
        n=st.integers(1, 3),
        queues=st.sampled_from(QUEUE_SETS),
        tasks=st.sampled_from(TASK_SETS),
    )
    def claim(
        self, data: st.DataObject, worker: uuid.UUID, n: int, queues: list[str], tasks: list[str]
    ) -> None:
        overrides = [data.draw(OVERRIDES) for _ in tasks]
        starts = [self.draw_position(data, q) for q in queues]
        picked: list[tuple[int, Model]] = []
        for q, start in zip(queues, starts, strict=True):
            rows = self.runnable(q, tasks)
            if start is None:
                picked += rows[:n]
            else:
                after_priority, after_run_at, after_id = start
                same = [
                    (i, m)
                    for i, m in rows
                    if m.priority == after_priority and (m.run_at, i) > (after_run_at, after_id)
                ]
                lower = [(i, m) for i, m in rows if m.priority < after_priority]
                picked += (same[:n] + lower[:n])[:n]
        expected = sorted(picked, key=order)[:n]
        rows = self.run(
            self.conn.fetch(
                queries.get("claim_jobs"),
                queues,
                tasks,
                overrides,
                n,
                LEASE,
                worker,
                [s[0] if s else None for s in starts],
                [s[1] if s else None for s in starts],
                [s[2] if s else None for s in starts],
                NO_BYTE_BUDGET,
            )
        )
        self.claimed(rows, expected, worker, dict(zip(tasks, overrides, strict=True)))

    @rule(
        data=st.data(),
        worker=st.sampled_from(WORKERS),
        n=st.integers(1, 3),
        queue=st.sampled_from(QUEUES),
        tasks=st.sampled_from(TASK_SETS),
    )
    def claim_head(
        self, data: st.DataObject, worker: uuid.UUID, n: int, queue: str, tasks: list[str]
    ) -> None:
        overrides = [data.draw(OVERRIDES) for _ in tasks]
        expected = self.runnable(queue, tasks)[:n]
        rows = self.run(
            self.conn.fetch(
                queries.get("claim_head"), queue, tasks, overrides, n, LEASE, worker, NO_BYTE_BUDGET
            )
        )
        self.claimed(rows, expected, worker, dict(zip(tasks, overrides, strict=True)))

    @precondition(lambda self: self.running() or self.stale)
    @rule(data=st.data())
    def begin(self, data: st.DataObject) -> None:
        """Runners start jobs: some running ones (reserved or already started) under their current
        tokens, and wrong tokens. Only a reserved job under its current, unexpired lease starts."""
        running = [i for i, _ in self.running()]
        ask = (
            [(i, self.jobs[i].token) for i in data.draw(st.lists(st.sampled_from(running), unique=True))]
            if running
            else []
        )
        wrong = self.wrong_tokens()
        if wrong:
            ask += data.draw(st.lists(st.sampled_from(wrong), max_size=2, unique=True))
        ask = data.draw(st.permutations(ask))
        worker, mark = data.draw(st.sampled_from(WORKERS)), self.mark(data.draw(MARK_AGO))
        rows = self.run(
            self.conn.fetch(queries.get("begin_jobs"), [i for i, _ in ask], [t for _, t in ask], worker, mark)
        )
        if worker in self.marks:
            self.move_mark(worker, mark)
        expected = set()
        for job_id, token in ask:
            m = self.jobs[job_id]
            leased = m.leased_until is not None and m.leased_until > self.clock
            if m.token == token and m.started_at is None and leased:
                expected.add(job_id)
        assert sorted(r["id"] for r in rows) == sorted(expected), (
            "only reserved, current, unexpired leases start"
        )
        for job_id in expected:
            m = self.jobs[job_id]
            m.attempts += 1
            m.started_at = self.clock

    @precondition(lambda self: self.running())
    @rule(data=st.data(), worker=st.sampled_from(WORKERS))
    def heartbeat(self, data: st.DataObject, worker: uuid.UUID) -> None:
        held = {i: m.token for i, m in self.running()}
        mark = self.mark(data.draw(MARK_AGO))
        wrong = self.wrong_tokens()
        extra = data.draw(st.sampled_from(wrong)) if wrong else None
        ask = dict(held)
        if extra:
            # A token that is not the job's current one, in place of the current one if the job is
            # running: it must not extend anything.
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
                QUEUES,
                TASKS,
                1,
                mark,
                [],
            )
        )
        self.marks.setdefault(worker, None)
        self.move_mark(worker, mark)
        assert {r["id"] for r in rows} == set(held), "exactly the current tokens are extended"
        for i in held:
            self.jobs[i].leased_until = self.clock + timedelta(seconds=LEASE)

    @precondition(lambda self: self.running() or self.stale)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        """A daemon writes a batch of outcomes as the store does: plain successes through
        `complete_succeeded`, the rest (successes with a result, retries, failures, snoozes) through
        `record_outcomes`. Each statement gets some running jobs under their current tokens and some
        wrong tokens (stale, or another job's; for a job that may be running, or in this very batch)."""
        running = [i for i, _ in self.running()]
        current = (
            data.draw(st.lists(st.sampled_from(running), min_size=1, max_size=3, unique=True))
            if running
            else []
        )
        wrong = self.wrong_tokens()
        batch: list[Outcome] = []
        for job_id, token in [(i, self.jobs[i].token) for i in current]:
            batch.append(self.outcome(data, job_id, token, data.draw(st.sampled_from(KINDS))))
        for kinds in (KINDS[:1], KINDS[1:]):  # wrong tokens for each statement
            for job_id, token in (
                data.draw(st.lists(st.sampled_from(wrong), max_size=2, unique=True)) if wrong else []
            ):
                batch.append(self.outcome(data, job_id, token, data.draw(st.sampled_from(kinds))))
        plain = data.draw(st.permutations([o for o in batch if o.state == "succeeded" and o.result is None]))
        rest = data.draw(
            st.permutations([o for o in batch if o.state != "succeeded" or o.result is not None])
        )
        if plain:
            rows = self.run(
                self.conn.fetch(
                    queries.get("complete_succeeded"), [o.id for o in plain], [o.token for o in plain]
                )
            )
            self.finished(plain, rows)
        if rest:
            rows = self.run(
                self.conn.fetch(
                    queries.get("record_outcomes"),
                    [o.id for o in rest],
                    [o.token for o in rest],
                    [o.state for o in rest],
                    [float(o.delay) for o in rest],
                    [o.refund for o in rest],
                    [o.error for o in rest],
                    [o.result for o in rest],
                    [int(o.state == "queued" and o.refund == 1) for o in rest],  # only snoozes refund here
                )
            )
            self.finished(rest, rows)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), action=st.sampled_from(["cancel", "retry"]))
    def operator(self, data: st.DataObject, action: str) -> None:
        """An operator cancels a job (only a queued one changes) or retries one (only a failed or
        cancelled one: back in the queue, runnable now, attempts reset)."""
        job_id = data.draw(st.sampled_from(sorted(self.jobs)))
        m = self.jobs[job_id]
        if action == "cancel":
            state = self.run(self.conn.fetchval(queries.get("cancel_job"), job_id))
            if m.state == "queued":
                m.state, m.finished_at = "cancelled", self.clock
        else:
            state = self.run(self.conn.fetchval(queries.get("retry_job"), job_id))
            if m.state in ("failed", "cancelled"):
                m.state, m.attempts, m.run_at, m.finished_at = "queued", 0, self.clock, None
                m.unclear_crashes = 0
        assert state == m.state

    # The lease is 30 s: the steps probe its edge. Then the daemon's rescue loop may run (limit 1: it
    # takes the lowest expired id only).
    @rule(
        data=st.data(),
        seconds=st.sampled_from([1, 10, 20, 25, 29, 30, 31, 100]),
        rescue=st.sampled_from([1000, None, 1]),
    )
    def advance(self, data: st.DataObject, seconds: int, rescue: int | None) -> None:
        self.clock += timedelta(seconds=seconds)
        self.set_clock()
        if rescue is None:
            return
        expired = [i for i, m in self.running() if m.leased_until and m.leased_until < self.clock]
        # Leases the rescuing daemon holds itself are left to its heartbeat.
        held = data.draw(st.lists(st.sampled_from(expired), unique=True)) if expired else []
        tokens = [self.jobs[i].token for i in held]
        rows = self.run(self.conn.fetch(queries.get("rescue_expired"), rescue, held, tokens))
        expired = [i for i in expired if i not in held][:rescue]
        assert sorted(r["id"] for r in rows) == expired, "exactly the expired leases, lowest ids first"
        for job_id in expired:
            m = self.jobs[job_id]
            if m.started_at is None:  # reserved, never started: back as it was
                self.release(job_id, "queued")
                continue
            m.error = f"LeaseExpired: worker {m.worker} stopped heartbeating during attempt {m.attempts}"
            assert m.max_attempts is not None  # set by its claim
            mark = self.marks.get(m.worker) if m.worker is not None else None
            unclear = mark is None or m.started_at > mark
            if unclear and m.unclear_crashes == 0:  # it may never have run: forgiven, the first time
                m.error += FORGIVEN
                m.attempts -= 1
                self.release(job_id, "queued")
            else:
                self.release(job_id, "failed" if m.attempts >= m.max_attempts else "queued")
            m.unclear_crashes += int(unclear)
            m.run_at = self.clock

    # -- helpers and the invariant --------------------------------------------------------------

    def mark(self, ago: int | None) -> datetime | None:
        return None if ago is None else self.clock - timedelta(seconds=ago)

    def move_mark(self, worker: uuid.UUID, mark: datetime | None) -> None:
        """greatest(old, new), as the statements write it: NULL is ignored."""
        old = self.marks.get(worker)
        self.marks[worker] = max((m for m in (old, mark) if m is not None), default=None)

    def add(self, run_in: int, max_attempts: int | None, priority: int, queue: str, task: str) -> None:
        job_id = self.run(
            self.conn.fetchval(
                queries.get("enqueue"),
                task,
                "{}",
                queue,
                None,
                priority,
                None,
                max_attempts,
                timedelta(seconds=run_in),
            )
        )
        run_at = self.clock + timedelta(seconds=run_in)
        self.jobs[job_id] = Model("queued", 0, max_attempts, run_at, priority, queue, task)

    def running(self) -> list[tuple[int, Model]]:
        return [(i, m) for i, m in sorted(self.jobs.items()) if m.state == "running"]

    def runnable(self, queue: str, tasks: list[str]) -> list[tuple[int, Model]]:
        """The claimable jobs of one queue, in claim order."""
        return sorted(
            (
                (i, m)
                for i, m in self.jobs.items()
                if m.state == "queued" and m.queue == queue and m.task in tasks and m.run_at <= self.clock
            ),
            key=order,
        )

    def draw_position(self, data: st.DataObject, queue: str) -> Position | None:
        """Where claim_jobs starts in `queue`: its head, after the last row the previous claim took
        there (as the dispatcher does), or after any job's key (whatever its state, so the position's
        own row can be queued and runnable)."""
        how = data.draw(st.sampled_from(["head", "last", "job"]))
        if how == "last":
            return self.after.get(queue)
        if how == "job" and self.jobs:
            near = sorted(i for i, m in self.jobs.items() if m.queue == queue) or sorted(self.jobs)
            job_id = data.draw(st.sampled_from(near))
            m = self.jobs[job_id]
            return (m.priority, m.run_at, job_id)
        return None

    def claimed(
        self,
        rows: list[asyncpg.Record],
        expected: list[tuple[int, Model]],
        worker: uuid.UUID,
        overrides: dict[str, int | None],
    ) -> None:
        assert sorted(r["id"] for r in rows) == sorted(i for i, _ in expected), "exactly the best runnable"
        for r in sorted(rows, key=lambda r: (-r["priority"], r["run_at"], r["id"])):
            m = self.jobs[r["id"]]
            m.state, m.token, m.worker = "running", r["lease_token"], worker
            m.leased_until = self.clock + timedelta(seconds=LEASE)
            m.started_at = None  # reserved until begin_jobs
            if m.max_attempts is None:  # the producer left it to the task, else the default
                override = overrides.get(m.task)
                m.max_attempts = override if override is not None else DEFAULT_MAX_ATTEMPTS
            # The attempt it will be, once started.
            assert (r["attempts"], r["max_attempts"]) == (m.attempts + 1, m.max_attempts), (
                "claimed",
                r["id"],
            )
            self.after[m.queue] = (m.priority, m.run_at, r["id"])

    def wrong_tokens(self) -> list[tuple[int, uuid.UUID]]:
        """(id, token) pairs whose token is not the job's current one, the dangerous ones first: the
        stale token of a job running again under a new lease, the token of another running job (ids and
        tokens mixed up), then stale tokens of jobs no longer running."""
        running = self.running()
        again = [s for s in self.stale if self.jobs[s[0]].state == "running"]
        swapped = [(i, n.token) for i, _ in running for k, n in running if i != k and n.token]
        return again + swapped + [s for s in self.stale if self.jobs[s[0]].state != "running"]

    def outcome(self, data: st.DataObject, job_id: int, token: uuid.UUID | None, kind: str) -> Outcome:
        m = self.jobs[job_id]
        if kind == "error":
            spent = m.max_attempts is not None and m.attempts >= m.max_attempts
            state = "failed" if m.token == token and spent else "queued"
        else:
            state = {"result": "succeeded", "snooze": "queued"}.get(kind, kind)
        error = "boom" if kind in ("error", "failed") else None
        result = '{"ok": true}' if kind == "result" else None
        delay = data.draw(st.sampled_from([0, 5]))
        return Outcome(job_id, token, state, delay, int(kind == "snooze"), error, result)

    def finished(self, outcomes: list[Outcome], rows: list[asyncpg.Record]) -> None:
        """Exactly the outcomes under the job's current token are written."""
        current = [o for o in outcomes if self.jobs[o.id].token == o.token]
        assert sorted(r["id"] for r in rows) == sorted(o.id for o in current), "only current tokens write"
        for o in current:
            m = self.jobs[o.id]
            if m.started_at is not None:  # only a counted attempt is given back
                m.attempts -= o.refund
            self.release(o.id, o.state)
            m.result = o.result
            m.error = o.error or m.error
            if o.state == "queued":
                m.run_at = self.clock + timedelta(seconds=o.delay)

    def release(self, job_id: int, state: str) -> None:
        """A running job's lease ends in `state`: its token goes stale."""
        m = self.jobs[job_id]
        self.stale.append((job_id, m.token))  # type: ignore[arg-type]
        m.state, m.token, m.leased_until, m.worker = state, None, None, None
        m.finished_at = None if state == "queued" else self.clock

    @invariant()
    def table_matches_model(self) -> None:
        rows = self.run(self.conn.fetch(f"SELECT id, {', '.join(COLUMNS)} FROM notifyq.jobs"))
        assert {r["id"] for r in rows} == set(self.jobs)
        for r in rows:
            m = self.jobs[r["id"]]
            want: tuple[Any, ...] = (
                m.state,
                m.attempts,
                m.max_attempts,
                m.run_at,
                m.priority,
                m.queue,
                m.task,
            )
            want += (m.token, m.leased_until, m.worker, m.started_at, m.finished_at, m.error, m.result)
            want += (m.unclear_crashes,)
            got = tuple(r[1:])
            diff = {c: (g, w) for c, g, w in zip(COLUMNS, got, want, strict=True) if g != w}
            assert not diff, (r["id"], "column: (table, model)", diff)
            # A queued job has an attempt left.
            assert r["state"] != "queued" or r["max_attempts"] is None or r["attempts"] < r["max_attempts"], (
                r["id"]
            )


def test_job_lifecycle_state_machine(db_dsn: str, soak: bool) -> None:
    examples = os.environ.get("NOTIFYQ_STATE_MACHINE_EXAMPLES")
    # NOTIFYQ_STATE_MACHINE_SHRINK=0 reports the first failing example as found: a mutation gate wants
    # only the verdict, and shrinking can take Hypothesis's limit of five minutes.
    no_shrink = os.environ.get("NOTIFYQ_STATE_MACHINE_SHRINK") == "0"
    machine = settings(
        max_examples=int(examples) if examples else 1000 if soak else 60,
        stateful_step_count=100 if soak else 50,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        phases=[p for p in Phase if not (no_shrink and p in (Phase.shrink, Phase.explain))],
    )(JobLifecycle)
    loop = JobLifecycle.loop = asyncio.new_event_loop()
    try:
        JobLifecycle.conn = loop.run_until_complete(asyncpg.connect(db_dsn))
        try:
            machine.TestCase().runTest()
        finally:
            loop.run_until_complete(JobLifecycle.conn.close())
    finally:
        loop.close()
