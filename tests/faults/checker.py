"""The one checker every fault scenario uses.

Every change of a job's row in or out of `running`, every write to a finished row and every delete is
audited by a trigger (test-only, installed in the scenario's own database), and every handler run records
itself in `test_runs` (tests/apps/recorder). From those, and from when the scenario killed which process,
the checker proves, or reports as violations:
- no job lost: every offered job reached a final state (or, for a scenario that stops early, none is
  left running), and the final state is the one its task is meant to reach (`rec.work` and `rec.noop`
  succeed, `rec.fail` and `rec.poison` fail, unless the scenario says otherwise);
- none invented: no job, and no handler run, for an id that was not offered;
- each outcome written once: exactly one transition into a final state per job, and no write at all to
  a row once it is final (a stale or late writer would show there);
- success recorded by its runner: the lease under which a job succeeded is the lease of a handler run
  that completed;
- no job ends `failed` without having started: its last lease was begun (its attempt counted, every
  task) and has a handler run (recorded tasks);
- leases never overlapped, and each claim has a fresh token: per job, claims and releases alternate, no
  token is claimed twice, and a running row never changes token without a release;
- runs never overlapped, finished or not: a run ends when it returns, raises or is cancelled, or when its
  process dies; two runs of one job overlap only where the older one had lost its lease before the newer
  began, in another process (a frozen process runs on until its heartbeat learns it: reported as a
  note, not a violation); in one daemon, never;
- no run (and no claim) starts before its `run_at`, and no run starts after its lease ended (a daemon
  frozen past its lease must not start buffered jobs another daemon may have run meanwhile);
- attempts: a claim adds none; each begin (the start of a claimed job) adds one, never beyond
  `max_attempts`, at most once per lease; only a release back to `queued` gives one back, and only one
  that was counted; the row's attempts equal begins minus refunds; every run belongs to a begun lease,
  one run per lease;
- rescue is prompt: a job whose lease expired is rescued within the scenario's bound (measured);
- deletes are only of finished rows older than the retention, and only where the scenario has one.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

AUDIT = """
CREATE TABLE IF NOT EXISTS test_audit (
    seq bigint GENERATED ALWAYS AS IDENTITY,
    job_id bigint NOT NULL,
    event text NOT NULL,
    token uuid,
    state text NOT NULL,
    attempts_before int,
    attempts_after int,
    max_attempts int,
    run_at timestamptz,
    leased_until timestamptz,
    finished_at timestamptz,
    error text,
    tx_at timestamptz NOT NULL DEFAULT now(),
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE OR REPLACE FUNCTION test_audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO test_audit (job_id, event, token, state, attempts_before, finished_at)
        VALUES (OLD.id, 'delete', OLD.lease_token, OLD.state::text, OLD.attempts, OLD.finished_at);
        RETURN NULL;
    END IF;
    IF NEW.state = 'running' AND OLD.state <> 'running' THEN
        INSERT INTO test_audit (job_id, event, token, state, attempts_before, attempts_after,
                                max_attempts, run_at)
        VALUES (NEW.id, 'claim', NEW.lease_token, 'running', OLD.attempts, NEW.attempts,
                NEW.max_attempts, NEW.run_at);
    ELSIF OLD.state = 'running' AND NEW.state <> 'running' THEN
        INSERT INTO test_audit (job_id, event, token, state, attempts_before, attempts_after,
                                max_attempts, run_at, leased_until, error)
        VALUES (NEW.id, 'release', OLD.lease_token, NEW.state::text, OLD.attempts, NEW.attempts,
                NEW.max_attempts, NEW.run_at, OLD.leased_until,
                CASE WHEN NEW.last_error IS DISTINCT FROM OLD.last_error THEN left(NEW.last_error, 40) END);
    ELSIF OLD.state = 'running' AND NEW.lease_token IS NOT DISTINCT FROM OLD.lease_token
          AND OLD.started_at IS NULL AND NEW.started_at IS NOT NULL THEN
        INSERT INTO test_audit (job_id, event, token, state, attempts_before, attempts_after, max_attempts)
        VALUES (NEW.id, 'begin', NEW.lease_token, 'running', OLD.attempts, NEW.attempts, NEW.max_attempts);
    ELSIF OLD.state = 'running' AND NEW.lease_token IS DISTINCT FROM OLD.lease_token THEN
        -- A running row that changes hands without a release: two leases would be live at once.
        INSERT INTO test_audit (job_id, event, token, state)
        VALUES (NEW.id, 'reclaim', NEW.lease_token, 'running');
    ELSIF OLD.state IN ('succeeded', 'failed', 'cancelled') THEN
        -- Nothing in these scenarios may touch a finished row: a late or stale write would show here.
        INSERT INTO test_audit (job_id, event, token, state)
        VALUES (NEW.id, 'final_touched', OLD.lease_token, NEW.state::text);
    END IF;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS test_audit ON notifyq.jobs;
CREATE TRIGGER test_audit AFTER UPDATE OR DELETE ON notifyq.jobs
    FOR EACH ROW EXECUTE FUNCTION test_audit_fn();
"""

RESULTS = Path(os.environ.get("NOTIFYQ_FAULT_RESULTS", Path(__file__).parent / "results"))
FINAL = ("succeeded", "failed", "cancelled")
# What each task of tests/apps/recorder is meant to end as; a scenario may say otherwise.
MEANT = {"rec.work": "succeeded", "rec.noop": "succeeded", "rec.fail": "failed", "rec.poison": "failed"}
# Tasks whose handler records its runs in test_runs.
RECORDED = ("rec.work", "rec.fail", "rec.poison")


@dataclass
class Report:
    scenario: str
    jobs_offered: int = 0
    jobs_finished: int = 0
    faults_injected: int = 0
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{self.scenario}.json").write_text(json.dumps(asdict(self), indent=2, default=str) + "\n")
        print(f"\nscenario {self.scenario}: " + json.dumps(asdict(self), default=str))


async def install(conn: asyncpg.Connection) -> None:
    from tests.apps.recorder import SCHEMA

    await conn.execute(SCHEMA)
    await conn.execute(AUDIT)


@dataclass
class _Run:
    pid: int
    token: Any
    attempt: int
    run_at: float | None
    started: float
    ended: float | None
    returned: bool
    cancelled: bool


async def check(
    conn: asyncpg.Connection,
    offered: set[int],
    report: Report,
    *,
    outcomes: dict[str, str] | None = None,
    deaths: dict[int, float] | None = None,
    journal: Path | None = None,
    rescue_within: float | None = None,
    retention: float | None = None,
    finish_all: bool = True,
) -> Report:
    """Fill `report` with counts, figures and every violation found; the caller asserts none.

    `outcomes`: task -> the final state its jobs must reach (over MEANT). `deaths`: pid -> when that
    process died (epoch seconds), the end of its unfinished runs. `journal`: the recorder's folder of run
    ends, for ends it could not write to the database (an outage). `rescue_within`: seconds after a lease
    ran out (or after the last kill before the rescue, if later) by which its rescue must have happened. `retention`: the daemons' retention, None when
    nothing may be deleted. `finish_all=False`: a scenario that stops before the backlog is done; jobs
    may still be queued, none may be running.
    """
    v = report.violations
    meant = {**MEANT, **(outcomes or {})}
    deaths = deaths or {}
    report.jobs_offered = len(offered)
    rows = await conn.fetch("SELECT id, task, state::text AS state, attempts FROM notifyq.jobs")
    jobs = {r["id"]: r for r in rows}
    audit = await conn.fetch(
        "SELECT job_id, event, token, state, attempts_before, attempts_after, max_attempts,"
        " extract(epoch FROM run_at)::float8 AS run_at, extract(epoch FROM leased_until)::float8 AS leased_until,"
        " extract(epoch FROM finished_at)::float8 AS finished_at, error,"
        " extract(epoch FROM at)::float8 AS at FROM test_audit ORDER BY job_id, seq"
    )
    by_job: dict[int, list[asyncpg.Record]] = {}
    for a in audit:
        by_job.setdefault(a["job_id"], []).append(a)
    deleted = {a["job_id"]: a for a in audit if a["event"] == "delete"}
    states = {i: r["state"] for i, r in jobs.items()} | {i: a["state"] for i, a in deleted.items()}

    final = {i for i, s in states.items() if s in FINAL}
    report.jobs_finished = len(final & offered)
    if finish_all:
        lost = sorted(offered - final)
        if lost:
            v.append(
                f"{len(lost)} job(s) not finished, e.g. {lost[:5]} in {[states.get(i) for i in lost[:5]]}"
            )
    missing = sorted(offered - set(states))
    if missing:
        v.append(f"{len(missing)} job(s) vanished without a delete, e.g. {missing[:5]}")
    invented = sorted(set(states) - offered)
    if invented:
        v.append(f"{len(invented)} job(s) nobody offered: {invented[:5]}")
    running = [i for i, s in states.items() if s == "running"]
    if running:
        v.append(f"{len(running)} job(s) still running: {running[:5]}")
    tasks = {i: r["task"] for i, r in jobs.items()}
    wrong = [
        (i, tasks[i], states[i])
        for i in sorted(final & set(tasks))
        if tasks[i] in meant and states[i] != meant[tasks[i]]
    ]
    if wrong:
        v.append(f"{len(wrong)} job(s) ended other than meant (id, task, state): {wrong[:5]}")

    runs_by_job = await _runs(conn, deaths, journal)
    if set(runs_by_job) - offered:
        v.append(f"handler runs for ids nobody offered: {sorted(set(runs_by_job) - offered)[:5]}")

    lateness: list[tuple[float, int]] = []
    claims_total = 0
    for job_id in sorted(offered):
        events = by_job.get(job_id, [])
        job_runs = runs_by_job.get(job_id, [])
        claims = [e for e in events if e["event"] == "claim"]
        begins = [e for e in events if e["event"] == "begin"]
        claims_total += len(claims)
        _leases(v, job_id, events)
        _attempts(v, job_id, events, jobs.get(job_id), deleted.get(job_id))
        _runs_against_begins(v, job_id, job_runs, begins)
        _runs_within_leases(v, job_id, job_runs, events)
        _overlaps(v, report.notes, job_id, job_runs, events)
        touched = [e for e in events if e["event"] == "final_touched"]
        if touched:
            v.append(f"job {job_id}: written after it was final ({touched[0]['state']})")
        releases = [e for e in events if e["event"] == "release"]
        success = [e for e in releases if e["state"] == "succeeded"]
        done_tokens = {r.token for r in job_runs if r.returned}
        if job_runs and success and success[-1]["token"] not in done_tokens:
            v.append(f"job {job_id}: succeeded under a lease whose handler run never completed")
        finals = [e for e in releases if e["state"] in ("succeeded", "failed")]
        if job_id in final and states[job_id] != "cancelled" and len(finals) != 1:
            v.append(f"job {job_id}: outcome written {len(finals)} times")
        ran = {r.token for r in job_runs}
        begun = {e["token"] for e in begins}
        if states.get(job_id) == "failed" and (not claims or claims[-1]["token"] not in begun):
            v.append(f"job {job_id}: failed, but its last lease never started")
        recorded_failure = states.get(job_id) == "failed" and tasks.get(job_id) in RECORDED
        if recorded_failure and (not claims or claims[-1]["token"] not in ran):
            v.append(f"job {job_id}: failed, but its last attempt never ran")
        for e in releases:
            if (e["error"] or "").startswith("LeaseExpired") and e["leased_until"] is not None:
                # From the lease's end, or from the last kill before the rescue if that came later: a
                # daemon killed before its rescue turn came round could not have rescued anything.
                kills = [t for t in deaths.values() if t <= e["at"]]
                since = max([e["leased_until"], *kills])
                lateness.append((e["at"] - since, job_id))
        if job_id in deleted:
            _deletion(v, job_id, deleted[job_id], retention)

    latest = max(lateness) if lateness else None
    if rescue_within is not None and latest is not None and latest[0] > rescue_within:
        v.append(
            f"job {latest[1]}: rescued {latest[0]:.2f}s after its lease ended and no daemon was being killed"
            f" (bound {rescue_within:.2f}s)"
        )
    report.figures["checker"] = {
        "claims": claims_total,
        "runs": sum(len(r) for r in runs_by_job.values()),
        "rescues": len(lateness),
        "rescue_lateness_max_s": round(latest[0], 3) if latest else None,
        "deleted": len(deleted),
        "overlaps_after_a_lost_lease": len(report.notes),
    }
    return report


async def _runs(
    conn: asyncpg.Connection, deaths: dict[int, float], journal: Path | None
) -> dict[int, list[_Run]]:
    ends = _journal(journal) if journal else {}
    rows = await conn.fetch(
        "SELECT job_id, pid, lease_token, attempt, extract(epoch FROM run_at)::float8 AS run_at,"
        " extract(epoch FROM started_at)::float8 AS started, extract(epoch FROM ended_at)::float8 AS ended,"
        " finished_at IS NOT NULL AS returned, cancelled FROM test_runs ORDER BY job_id, started_at"
    )
    found: dict[int, list[_Run]] = {}
    for r in rows:
        ended, returned, cancelled = r["ended"], r["returned"], r["cancelled"]
        logged = ends.get((r["job_id"], str(r["lease_token"]), r["pid"]))
        if ended is None and logged is not None:
            ended, returned, cancelled = logged["ended"], logged["returned"], logged["cancelled"]
        if ended is None:
            ended = deaths.get(r["pid"])
        found.setdefault(r["job_id"], []).append(
            _Run(
                r["pid"],
                r["lease_token"],
                r["attempt"],
                r["run_at"],
                r["started"],
                ended,
                returned,
                cancelled,
            )
        )
    return found


def _journal(folder: Path) -> dict[tuple[int, str, int], dict[str, Any]]:
    ends = {}
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            ends[(entry["job_id"], entry["token"], entry["pid"])] = entry
    return ends


def _leases(v: list[str], job_id: int, events: list[asyncpg.Record]) -> None:
    holder = None
    seen: set[Any] = set()
    for e in events:
        if e["event"] == "claim":
            if holder is not None:
                v.append(f"job {job_id}: claimed while lease {holder} was live")
            if e["token"] in seen:
                v.append(f"job {job_id}: lease token {e['token']} claimed twice")
            seen.add(e["token"])
            holder = e["token"]
            if e["run_at"] is not None and e["at"] < e["run_at"]:
                v.append(f"job {job_id}: claimed {e['run_at'] - e['at']:.3f}s before its run_at")
        elif e["event"] == "release":
            if e["token"] != holder:
                v.append(f"job {job_id}: released by {e['token']} while {holder} held it")
            holder = None
        elif e["event"] == "reclaim":
            v.append(f"job {job_id}: a running row changed its lease token without a release")


def _attempts(
    v: list[str], job_id: int, events: list[asyncpg.Record], row: asyncpg.Record | None, gone: Any
) -> None:
    begins = refunds = 0
    begun = False  # the current lease was begun: only then has it an attempt to give back
    for e in events:
        before, after = e["attempts_before"], e["attempts_after"]
        if e["event"] == "claim":
            begun = False
            if after != before:
                v.append(f"job {job_id}: a claim took attempts from {before} to {after}")
        elif e["event"] == "begin":
            begins += 1
            if begun:
                v.append(f"job {job_id}: one lease begun twice")
            begun = True
            if after != before + 1:
                v.append(f"job {job_id}: a begin took attempts from {before} to {after}")
            if after > e["max_attempts"]:
                v.append(f"job {job_id}: started attempt {after} of {e['max_attempts']}")
        elif e["event"] == "release":
            if after == before - 1 and e["state"] == "queued" and begun:
                refunds += 1
            elif after != before:
                v.append(f"job {job_id}: a release to {e['state']} took attempts from {before} to {after}")
    attempts = row["attempts"] if row is not None else gone["attempts_before"] if gone is not None else None
    if attempts is not None and attempts != begins - refunds:
        v.append(f"job {job_id}: attempts {attempts}, but {begins} begins and {refunds} given back")


def _runs_against_begins(v: list[str], job_id: int, runs: list[_Run], begins: list[asyncpg.Record]) -> None:
    attempt_of = {b["token"]: b["attempts_after"] for b in begins}
    per_token: dict[Any, int] = {}
    for r in runs:
        per_token[r.token] = per_token.get(r.token, 0) + 1
        if r.token not in attempt_of:
            v.append(f"job {job_id}: a run in pid {r.pid} under lease {r.token}, which never began")
        elif attempt_of[r.token] != r.attempt:
            v.append(f"job {job_id}: a run saw attempt {r.attempt}, its begin counted {attempt_of[r.token]}")
        if r.run_at is not None and r.started < r.run_at:
            v.append(f"job {job_id}: a run started {r.run_at - r.started:.3f}s before its run_at")
    doubled = [t for t, n in per_token.items() if n > 1]
    if doubled:
        v.append(f"job {job_id}: {len(doubled)} lease(s) ran more than once")


def _runs_within_leases(v: list[str], job_id: int, runs: list[_Run], events: list[asyncpg.Record]) -> None:
    ended = {e["token"]: e["at"] for e in events if e["event"] == "release"}
    for r in runs:
        if r.token in ended and r.started > ended[r.token]:
            v.append(
                f"job {job_id}: a run in pid {r.pid} began {r.started - ended[r.token]:.3f}s after its lease ended"
            )


def _overlaps(
    v: list[str], notes: list[str], job_id: int, runs: list[_Run], events: list[asyncpg.Record]
) -> None:
    lease_ended = {e["token"]: e["at"] for e in events if e["event"] == "release"}
    for a, b in itertools.combinations(runs, 2):  # sorted by start: a started first
        if a.ended is not None and a.ended <= b.started:
            continue
        lost_first = a.token in lease_ended and lease_ended[a.token] <= b.started
        if a.ended is None:
            v.append(f"job {job_id}: a run in pid {a.pid} never ended, and another began in pid {b.pid}")
        elif lost_first and a.pid != b.pid:
            how = "was cancelled" if a.cancelled else "ran on (its outcome fenced)"
            notes.append(
                f"job {job_id}: the run in pid {a.pid} had lost its lease and {how}"
                f" {a.ended - b.started:.3f}s after the next run began in pid {b.pid}"
            )
        else:
            where = "in one daemon" if a.pid == b.pid else f"in pids {a.pid} and {b.pid}"
            v.append(f"job {job_id}: two runs overlapped {where} by {a.ended - b.started:.3f}s")


def _deletion(v: list[str], job_id: int, event: asyncpg.Record, retention: float | None) -> None:
    if retention is None:
        v.append(f"job {job_id}: deleted, and this scenario has no retention")
    elif event["state"] not in FINAL:
        v.append(f"job {job_id}: deleted while {event['state']}")
    elif event["finished_at"] is None or event["at"] - event["finished_at"] < retention:
        v.append(f"job {job_id}: deleted before the retention of {retention}s had passed")
