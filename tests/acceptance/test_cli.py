"""The CLI as a newcomer runs it: enqueue, check, serve's start-up errors, and `notifyq dev`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from notifyq.devserver import PrivateCluster
from tests.support import ROOT, cli

pytestmark = pytest.mark.timeout(60)


async def test_enqueue_from_the_cli(conn: asyncpg.Connection, db_dsn: str) -> None:
    done = cli(
        "enqueue",
        "emails.send",
        "--dsn",
        db_dsn,
        "--payload",
        '{"to": "a@b.c"}',
        "--queue",
        "mail",
        "--priority",
        "3",
        "--run-at",
        "+5m",
        "--dedup-key",
        "welcome-1",
    )
    assert done.returncode == 0, done.stderr
    job_id = int(done.stdout)
    row = await conn.fetchrow("SELECT *, run_at - now() AS d FROM notifyq.jobs WHERE id = $1", job_id)
    assert (row["task"], row["queue"], row["priority"], row["dedup_key"]) == (
        "emails.send",
        "mail",
        3,
        "welcome-1",
    )
    assert row["d"].total_seconds() > 290
    again = cli("enqueue", "emails.send", "--dsn", db_dsn, "--dedup-key", "welcome-1")
    assert int(again.stdout) == job_id, "dedup hit returns the existing id"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--payload", "{not json"], "--payload is not valid JSON"),
        (["--queue", "Bad Queue"], "notifyq.jobs.queue: must match"),
        (["--max-attempts", "0"], "notifyq.jobs.max_attempts: must be between 1 and 1000"),
        (["--run-at", "tomorrow-ish"], "--run-at 'tomorrow-ish'"),
    ],
)
async def test_enqueue_refusals_are_one_clear_line(db_dsn: str, args: list[str], needle: str) -> None:
    done = cli("enqueue", "t", "--dsn", db_dsn, *args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], done.stderr


def test_serve_with_a_bad_setting_stops_with_one_line() -> None:
    done = cli("serve", "--app", "examples.hello:registry", "--concurrency", "0")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "notifyq: invalid setting concurrency: Input should be greater than or equal to 1"
    )
    missing = cli("serve", "--app", "no_such_module:registry")
    assert missing.returncode == 2 and "cannot import 'no_such_module'" in missing.stderr


def test_password_never_printed_on_connection_failure() -> None:
    done = cli("check", "--dsn", "postgresql://nobody:hunter2@127.0.0.1:1/nope?password=hunter3")
    assert done.returncode == 3
    assert "hunter2" not in done.stdout + done.stderr and "hunter3" not in done.stdout + done.stderr
    assert "postgresql://nobody:***@127.0.0.1:1/nope?password=***" in done.stdout


async def test_check_warns_about_jobs_no_handler_takes(conn: asyncpg.Connection, db_dsn: str) -> None:
    await conn.execute(
        "INSERT INTO notifyq.jobs (task) VALUES ('hello.greet'), ('ghost.task'), ('ghost.task')"
    )
    done = cli("check", "--dsn", db_dsn, "--app", "examples.hello:registry")
    assert done.returncode == 0, done.stdout
    assert "WARN  handlers: 2 queued job(s) of task 'ghost.task' in queue 'default'" in done.stdout
    assert "hello.greet" not in done.stdout.split("WARN", 1)[1]


@pytest.mark.timeout(120)
def test_dev_runs_jobs_on_a_private_postgres_and_stops_on_ctrl_c(pg_tmp: Path) -> None:
    data = pg_tmp / "pg"
    log = pg_tmp / "dev.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "notifyq",
                "dev",
                "--data-dir",
                str(data),
                "--jobs",
                "6",
                "--log-format",
                "json",
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            finished = 0
            deadline = time.monotonic() + 90
            while finished < 6 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
                finished = log.read_text().count('"event":"job_finished"')
            assert finished >= 6, log.read_text()[-3000:]
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert "stopping the private Postgres" in text
    assert not PrivateCluster(data, 0).running(), "the private Postgres was stopped"


def test_libpq_environment_is_used_when_dsn_is_unset(db_dsn: str) -> None:
    database = db_dsn.rsplit("/", 1)[1]
    env = {"PGHOST": "127.0.0.1", "PGPORT": "5432", "PGUSER": "postgres", "PGDATABASE": database}
    done = cli("check", env={k: v for k, v in env.items()})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "connected to (from PG* environment variables)" in done.stdout


async def test_jobs_list_show_retry_cancel(conn: asyncpg.Connection, db_dsn: str) -> None:
    failed = await conn.fetchval(
        "INSERT INTO notifyq.jobs (task, payload) VALUES ('a', '{\"k\": 1}') RETURNING id"
    )
    await conn.execute(
        "UPDATE notifyq.jobs SET state = 'failed', attempts = 3, last_error = 'Boom: it broke',"
        " finished_at = now() WHERE id = $1",
        failed,
    )
    queued = await conn.fetchval("INSERT INTO notifyq.jobs (task) VALUES ('b') RETURNING id")
    listed = cli("jobs", "list", "--dsn", db_dsn, "--state", "failed")
    assert (
        listed.returncode == 0 and "Boom: it broke" in listed.stdout and f"\n{queued} " not in listed.stdout
    )
    shown = cli("jobs", "show", str(failed), "--dsn", db_dsn)
    assert json.loads(shown.stdout)["payload"] == {"k": 1}
    assert cli("jobs", "retry", str(failed), "--dsn", db_dsn).stdout.strip() == f"job {failed} queued"
    row = await conn.fetchrow("SELECT state::text, attempts FROM notifyq.jobs WHERE id = $1", failed)
    assert (row["state"], row["attempts"]) == ("queued", 0)
    assert cli("jobs", "cancel", str(queued), "--dsn", db_dsn).stdout.strip() == f"job {queued} cancelled"
    assert cli("jobs", "cancel", str(queued), "--dsn", db_dsn).returncode == 0, "cancelling twice is fine"
    done = await conn.fetchval("INSERT INTO notifyq.jobs (task) VALUES ('c') RETURNING id")
    await conn.execute("UPDATE notifyq.jobs SET state = 'succeeded', finished_at = now() WHERE id = $1", done)
    refused = cli("jobs", "cancel", str(done), "--dsn", db_dsn)
    assert refused.returncode == 1 and f"job {done} is succeeded; cannot cancel it" in refused.stderr
    assert cli("jobs", "show", "999999", "--dsn", db_dsn).stderr.strip() == "notifyq: no job 999999"
