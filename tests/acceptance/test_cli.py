"""The CLI as a newcomer runs it: enqueue, check, serve's start-up errors, and `notifyq dev`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import asyncpg
import pytest

from notifyq.devserver import PrivateCluster
from tests.support import (
    ADMIN_HOST,
    ADMIN_PASSWORD,
    ADMIN_PORT,
    ADMIN_USER,
    ROOT,
    cli,
    database_of,
    stop_cluster_at,
)

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
        (["--max-attempts", "0"], "--max-attempts: must be between 1 and 1000 (got 0)"),
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


def _start_dev(data: Path, log: Path, out: IO[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
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


def _wait_in_log(proc: subprocess.Popen[bytes], log: Path, needle: str, count: int, timeout: float) -> None:
    """Wait until `needle` appears `count` times in the log (polled: the log is another process's)."""
    deadline = time.monotonic() + timeout
    while log.read_text().count(needle) < count:
        assert proc.poll() is None, f"notifyq dev exited ({proc.returncode}): {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {count} x {needle} in {timeout}s: {log.read_text()[-3000:]}"
        time.sleep(0.1)


def _end_dev(proc: subprocess.Popen[bytes], data: Path) -> None:
    """On any path out of a `notifyq dev` test: SIGKILL it if it still runs, then stop the private
    Postgres it started (a daemon of its own, which a SIGKILLed `notifyq dev` leaves running)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    stop_cluster_at(data)


@pytest.mark.timeout(120)
def test_dev_runs_jobs_on_a_private_postgres_and_stops_on_ctrl_c(pg_tmp: Path) -> None:
    data = pg_tmp / "pg"
    log = pg_tmp / "dev.log"
    with open(log, "w") as out:
        proc = _start_dev(data, log, out)
        try:
            _wait_in_log(proc, log, '"event":"job_finished"', 6, 90)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 0, log.read_text()[-3000:]
            stopped = not PrivateCluster(data, 0).running()
        finally:
            _end_dev(proc, data)
    text = log.read_text()
    assert "stopping the private Postgres" in text
    assert stopped, "the private Postgres was stopped"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "sighup"])
def test_dev_stops_its_private_postgres_on_sigterm_and_sighup(pg_tmp: Path, sig: signal.Signals) -> None:
    data = pg_tmp / "pg"
    log = pg_tmp / "dev.log"
    with open(log, "w") as out:
        proc = _start_dev(data, log, out)
        try:
            _wait_in_log(proc, log, '"event":"daemon_ready"', 1, 90)
            proc.send_signal(sig)
            proc.wait(30)
            stopped = not PrivateCluster(data, 0).running()
        finally:
            _end_dev(proc, data)
    assert "stopping the private Postgres" in log.read_text(), log.read_text()[-3000:]
    assert stopped, f"the private Postgres outlived notifyq dev after {sig.name}"


def test_libpq_environment_is_used_when_dsn_is_unset(db_dsn: str) -> None:
    database = database_of(db_dsn)
    env = {"PGHOST": ADMIN_HOST, "PGPORT": str(ADMIN_PORT), "PGUSER": ADMIN_USER, "PGDATABASE": database}
    if ADMIN_PASSWORD is not None:
        env["PGPASSWORD"] = ADMIN_PASSWORD
    done = cli("check", env=env)
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


@pytest.mark.parametrize("args", [["migrate"], ["enqueue", "t"], ["jobs", "cancel", "1"]])
async def test_a_read_only_server_is_a_runtime_failure_in_one_line(
    conn: asyncpg.Connection, db_dsn: str, args: list[str]
) -> None:
    await conn.execute(f'ALTER DATABASE "{database_of(db_dsn)}" SET default_transaction_read_only = on')
    done = cli(*args, "--dsn", db_dsn)
    assert done.returncode == 1, done.stderr  # not 2: nothing is wrong with the command or its settings
    assert done.stderr.count("\n") == 1 and "read-only" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_help_shows_the_defaults_settings_really_use() -> None:
    from notifyq.config import Settings

    text = " ".join(cli("serve", "--help").stdout.split())
    fields = Settings.model_fields
    assert (
        f"Safety poll, in case a NOTIFY is missed (default {fields['poll_interval_seconds'].default:g} s)"
        in text
    )
    assert f"Jobs run at once (default {fields['concurrency'].default})" in text
    assert f"Lease length (default {fields['lease_seconds'].default:g} s)" in text
