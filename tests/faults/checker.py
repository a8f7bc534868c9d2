"""The one checker every fault scenario uses.

Every change of a job's state in or out of `running` is audited by a trigger (test-only, installed in
the scenario's own database), and every handler run records itself in `test_runs` (tests/apps/recorder).
From those the checker proves, or reports as violations:
- no job lost: every offered job reached a final state;
- none invented: no job, and no handler run, for an id that was not offered;
- each outcome written once: exactly one transition into a final state per job, and no write at all
  to a row once it is final (a stale or late writer would show there);
- success recorded by its runner: the lease under which a job succeeded is the lease of a handler run
  that completed (for tasks that record their runs);
- leases never overlapped: per job, claims and releases alternate, so no two leases were live at once,
  and no two completed handler runs of one job overlapped in time;
- nothing is left `running`.
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
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE OR REPLACE FUNCTION test_audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = 'running' AND OLD.state <> 'running' THEN
        INSERT INTO test_audit (job_id, event, token, state)
        VALUES (NEW.id, 'claim', NEW.lease_token, 'running');
    ELSIF OLD.state = 'running' AND NEW.state <> 'running' THEN
        INSERT INTO test_audit (job_id, event, token, state)
        VALUES (NEW.id, 'release', OLD.lease_token, NEW.state::text);
    ELSIF OLD.state IN ('succeeded', 'failed', 'cancelled') THEN
        -- Nothing in these scenarios may touch a finished row: a late or stale write would show here.
        INSERT INTO test_audit (job_id, event, token, state)
        VALUES (NEW.id, 'final_touched', OLD.lease_token, NEW.state::text);
    END IF;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS test_audit ON notifyq.jobs;
CREATE TRIGGER test_audit AFTER UPDATE ON notifyq.jobs FOR EACH ROW EXECUTE FUNCTION test_audit_fn();
"""

RESULTS = Path(os.environ.get("NOTIFYQ_FAULT_RESULTS", Path(__file__).parent / "results"))


@dataclass
class Report:
    scenario: str
    jobs_offered: int = 0
    jobs_finished: int = 0
    faults_injected: int = 0
    violations: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{self.scenario}.json").write_text(json.dumps(asdict(self), indent=2, default=str) + "\n")
        print(f"\nscenario {self.scenario}: " + json.dumps(asdict(self), default=str))


async def install(conn: asyncpg.Connection) -> None:
    from tests.apps.recorder import SCHEMA

    await conn.execute(SCHEMA)
    await conn.execute(AUDIT)


async def check(conn: asyncpg.Connection, offered: set[int], report: Report) -> Report:
    """Fill `report` with counts and every violation found; the caller asserts none."""
    v = report.violations
    report.jobs_offered = len(offered)
    rows = await conn.fetch("SELECT id, state::text AS state FROM notifyq.jobs")
    states = {r["id"]: r["state"] for r in rows}
    final = {i for i, s in states.items() if s in ("succeeded", "failed", "cancelled")}
    report.jobs_finished = len(final & offered)
    lost = sorted(offered - final)
    if lost:
        v.append(
            f"{len(lost)} job(s) not finished, e.g. {lost[:5]} in states {[states.get(i) for i in lost[:5]]}"
        )
    invented = sorted(set(states) - offered)
    if invented:
        v.append(f"{len(invented)} job(s) nobody offered: {invented[:5]}")
    ran = {r["job_id"] for r in await conn.fetch("SELECT DISTINCT job_id FROM test_runs")}
    if ran - offered:
        v.append(f"handler runs for ids nobody offered: {sorted(ran - offered)[:5]}")
    running = [i for i, s in states.items() if s == "running"]
    if running:
        v.append(f"{len(running)} job(s) still running: {running[:5]}")

    audit = await conn.fetch("SELECT job_id, event, token, state FROM test_audit ORDER BY job_id, seq")
    by_job: dict[int, list[asyncpg.Record]] = {}
    for a in audit:
        by_job.setdefault(a["job_id"], []).append(a)
    runs = await conn.fetch(
        "SELECT job_id, lease_token, started_at, finished_at FROM test_runs ORDER BY job_id, started_at"
    )
    runs_by_job: dict[int, list[asyncpg.Record]] = {}
    for r in runs:
        runs_by_job.setdefault(r["job_id"], []).append(r)
    for job_id in sorted(offered):
        events = by_job.get(job_id, [])
        touched = [e for e in events if e["event"] == "final_touched"]
        if touched:
            v.append(f"job {job_id}: written after it was final ({touched[0]['state']})")
        job_runs = runs_by_job.get(job_id, [])
        done = [r for r in job_runs if r["finished_at"] is not None]
        for a, b in itertools.pairwise(done):
            if b["started_at"] < a["finished_at"]:
                v.append(f"job {job_id}: completed runs overlapped")
        success = [e for e in events if e["event"] == "release" and e["state"] == "succeeded"]
        if job_runs and success and success[-1]["token"] not in {r["lease_token"] for r in done}:
            v.append(f"job {job_id}: succeeded under a lease whose handler run never completed")
        finals = [e for e in events if e["event"] == "release" and e["state"] in ("succeeded", "failed")]
        if job_id in final and states[job_id] != "cancelled" and len(finals) != 1:
            v.append(f"job {job_id}: outcome written {len(finals)} times")
        holder = None
        for e in events:
            if e["event"] == "claim":
                if holder is not None:
                    v.append(f"job {job_id}: claimed while lease {holder} was live")
                holder = e["token"]
            else:
                if e["token"] != holder:
                    v.append(f"job {job_id}: released by {e['token']} while {holder} held it")
                holder = None
    return report
