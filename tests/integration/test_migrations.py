"""Migrations: concurrent runs, idempotence, --sql, the version guard, roles, and the schema snapshot."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import asyncpg
import pytest

from notifyq.devserver import pg_bindir
from tests.support import ROOT, SHIPPED_ROLES, ScratchRoles

pytestmark = pytest.mark.timeout(60)
SNAPSHOT = ROOT / "tests" / "snapshots" / "schema.sql"


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "notifyq", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        input=stdin,
        timeout=60,
    )


async def test_two_concurrent_migrates_apply_once(empty_dsn: str) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "notifyq", "migrate", "--dsn", empty_dsn],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    said = sorted(o[0].strip() for o in outs)
    assert said == [
        "applied 0001_init\napplied 0002_enqueue_many\napplied 0003_claim_index_only\napplied 0004_producer_guards\n"
        "applied 0005_unclear_crashes\napplied 0006_queue_counts\napplied 0007_schedules\napplied 0008_callbacks\n"
        "applied 0009_snoozes",
        "schema is current; nothing to apply",
    ]
    conn = await asyncpg.connect(empty_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM notifyq.schema_migrations") == 9
    finally:
        await conn.close()
    again = cli("migrate", "--dsn", empty_dsn)
    assert again.returncode == 0 and "nothing to apply" in again.stdout


async def test_migrate_sql_prints_a_complete_script_and_changes_nothing(empty_dsn: str) -> None:
    shown = cli("migrate", "--sql", "--dsn", empty_dsn)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("BEGIN;") and "CREATE TABLE notifyq.jobs" in shown.stdout
    conn = await asyncpg.connect(empty_dsn)
    try:
        assert await conn.fetchval("SELECT to_regnamespace('notifyq')") is None, "--sql changed nothing"
    finally:
        await conn.close()
    # A DBA runs the printed script with psql: the result is a current schema.
    ran = subprocess.run(
        ["psql", "-v", "ON_ERROR_STOP=1", "-q", empty_dsn],
        input=shown.stdout,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    checked = cli("check", "--dsn", empty_dsn)
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_check_and_serve_refuse_a_missing_or_unknown_migration(empty_dsn: str) -> None:
    missing = cli("check", "--dsn", empty_dsn)
    assert missing.returncode == 3
    assert "missing migration(s) 0001_init, 0002_enqueue_many, 0003_claim_index_only, 0004" in missing.stdout
    assert cli("migrate", "--dsn", empty_dsn).returncode == 0
    conn = await asyncpg.connect(empty_dsn)
    try:
        await conn.execute(
            "INSERT INTO notifyq.schema_migrations (version, name, checksum)"
            " VALUES (999, 'from_the_future', 'x')"
        )
    finally:
        await conn.close()
    unknown = cli("check", "--dsn", empty_dsn)
    assert unknown.returncode == 3 and "unknown migration(s) 0999_from_the_future" in unknown.stdout
    serve = subprocess.run(
        [
            sys.executable,
            "-m",
            "notifyq",
            "serve",
            "--dsn",
            empty_dsn,
            "--app",
            "examples.hello:registry",
            "--http-address",
            "off",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert serve.returncode == 1
    assert serve.stderr.strip().splitlines()[-1] == (
        "notifyq: schema is newer than this notifyq:"
        " unknown migration(s) 0999_from_the_future; upgrade notifyq"
    )


def _normalized_dump(dsn: str) -> str:
    dump = subprocess.run(
        [
            str(pg_bindir() / "pg_dump"),
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "--schema=notifyq",
            dsn,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    keep = [
        line
        for line in dump.splitlines()
        # \restrict lines carry a random key (pg_dump 15.14 and later).
        if line
        and not line.startswith(("--", "SET ", "SELECT pg_catalog.set_config", "\\restrict", "\\unrestrict"))
    ]
    return re.sub(r"\n{2,}", "\n", "\n".join(keep)) + "\n"


async def test_schema_matches_the_checked_in_snapshot(db_dsn: str) -> None:
    dump = _normalized_dump(db_dsn)
    # Read before any regeneration: the comparison is always against the snapshot as it was checked in.
    expected = SNAPSHOT.read_text() if SNAPSHOT.exists() else ""
    if dump != expected and os.environ.get("NOTIFYQ_UPDATE_SNAPSHOT") == "1":
        SNAPSHOT.write_text(dump)
        pytest.fail(
            "regenerated tests/snapshots/schema.sql (NOTIFYQ_UPDATE_SNAPSHOT=1): review the diff, then "
            "rerun without NOTIFYQ_UPDATE_SNAPSHOT; a regenerating run never passes"
        )
    assert dump == expected, (
        "the migrations no longer produce tests/snapshots/schema.sql; if that is intended, "
        "rerun with NOTIFYQ_UPDATE_SNAPSHOT=1 and review the diff"
    )


async def test_least_privilege_roles(empty_dsn: str, scratch_roles: ScratchRoles) -> None:
    # The shipped scripts, with this test's own role names (roles are cluster-wide; see ScratchRoles).
    owner, producer, worker, observer = (scratch_roles.name(r) for r in SHIPPED_ROLES)
    conn = await asyncpg.connect(empty_dsn)
    try:
        await conn.execute(scratch_roles.script(ROOT / "sql/roles/01_create_roles.sql"))
        await conn.execute(f"SET ROLE {owner}")
        from notifyq import migrate

        await migrate.apply(conn)  # no superuser needed
        await conn.execute(scratch_roles.script(ROOT / "sql/roles/02_grants.sql"))
        await conn.execute("RESET ROLE")
        assert await conn.fetchval("SELECT tableowner FROM pg_tables WHERE tablename = 'jobs'") == owner

        await conn.execute(f"SET ROLE {producer}")
        await conn.execute("INSERT INTO notifyq.jobs (task) VALUES ('p')")
        assert await conn.fetchval("SELECT notifyq.enqueue('p', dedup_key => 'k')") > 0
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE notifyq.jobs SET priority = 1")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM notifyq.jobs")
        # Schedules: the contract's columns, by INSERT, UPDATE or notifyq.schedule(); never the daemons'
        # bookkeeping, or a producer could make a schedule run ticks from before it existed.
        await conn.execute("INSERT INTO notifyq.schedules (name, cron, task) VALUES ('p1', '* * * * *', 'p')")
        await conn.execute("SELECT notifyq.schedule('p2', '0 3 * * *', 'p')")
        await conn.execute("UPDATE notifyq.schedules SET cron = '*/5 * * * *', enabled = false WHERE name = 'p1'")
        for sql in (
            "UPDATE notifyq.schedules SET last_tick = NULL",
            "UPDATE notifyq.schedules SET since = now() - interval '1 hour'",
            "UPDATE notifyq.schedules SET source = 'code'",
            "INSERT INTO notifyq.schedules (name, cron, task, source) VALUES ('p3', '* * * * *', 'p', 'code')",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
        # Nor through a pinned clock: a producer's notifyq.now does not date a schedule back.
        await conn.execute("SET notifyq.now = '2000-01-01 00:00:00+00'")
        await conn.execute("SELECT notifyq.schedule('p4', '0 * * * *', 'p', backfill => '2 days')")
        await conn.execute("RESET notifyq.now")
        assert await conn.fetchval("SELECT since > now() - interval '1 minute' FROM notifyq.schedules WHERE name = 'p4'")
        await conn.execute("RESET ROLE")

        await conn.execute(f"SET ROLE {worker}")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("ALTER TABLE notifyq.jobs DISABLE TRIGGER jobs_guard_insert")
        # Refused twice over: no INSERT privilege on state, and the guard trigger behind it.
        with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.CheckViolationError)):
            await conn.execute("INSERT INTO notifyq.jobs (task, state) VALUES ('w', 'running')")
        await conn.execute("UPDATE notifyq.jobs SET priority = 1")
        # The scheduler's writes, and a code schedule's upsert.
        await conn.execute("UPDATE notifyq.schedules SET last_tick = now(), next_tick = now(), error = NULL")
        await conn.execute("UPDATE notifyq.schedules SET source = 'code' WHERE name = 'p1'")
        await conn.execute("RESET ROLE")

        await conn.execute(f"SET ROLE {observer}")
        assert await conn.fetchval("SELECT count(*) FROM notifyq.jobs") == 2
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM notifyq.jobs")
        await conn.execute("RESET ROLE")
    finally:
        await conn.close()
