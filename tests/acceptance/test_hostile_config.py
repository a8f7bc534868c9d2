"""Hostile configuration, as real processes meet it (issue 12, classes 5, 10, 11 and part of 12).

Each refusal is one line (exit 2 for a setting, 1 for the environment), comes at start rather than as a
retry loop or a crash later, and never quotes a piece of a password. A `serve` that does not exit is a
failure here: it is what these settings did before (retried, or ran and failed on every turn).
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import anyio
import asyncpg
import pytest

from notifyq.client import NewJob, enqueue, enqueue_many
from tests.support import ADMIN_HOST, ADMIN_PORT, ROOT, DaemonProcess, database_of, with_login

pytestmark = pytest.mark.timeout(60)

# Long enough for a refusal at start (a second or two), short enough to fail fast when none comes.
_EXIT_SECONDS = 15


def _notifyq(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m notifyq ...`, which must end by itself: one that keeps running fails the test."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "notifyq", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=_EXIT_SECONDS,
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "NOTIFYQ_HTTP_ADDRESS": "off",
                "NOTIFYQ_LOG_FORMAT": "json",
                **(env or {}),
            },
        )
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-1500:]
        pytest.fail(f"notifyq {' '.join(args)} still running after {_EXIT_SECONDS}s: {tail!r}")


def _one_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    """The one line a refusal prints (serve's JSON log lines, on the same stream, aside)."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("{")]
    assert len(lines) == 1, done.stderr
    assert done.returncode == code, (done.returncode, done.stderr)
    return lines[0]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def _app(folder: Path, name: str, body: str) -> dict[str, str]:
    """Environment for `--app NAME:registry` where NAME's source is `body`."""
    (folder / f"{name}.py").write_text(body)
    return {"PYTHONPATH": f"{ROOT}{os.pathsep}{folder}"}


# -- class 5: settings that passed validation and then failed on every turn ------------------------


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e300"])
def test_serve_refuses_a_non_finite_or_huge_retention_at_start(db_dsn: str, value: str) -> None:
    done = _notifyq(
        "serve",
        "--app",
        "examples.hello:registry",
        env={"NOTIFYQ_DSN": db_dsn, "NOTIFYQ_RETENTION_SECONDS": value},
    )
    assert _one_line(done, 2).startswith("notifyq: invalid setting retention_seconds: ")


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        ('timeout=float("nan")', "timeout must be a number of seconds"),
        ('timeout=float("inf")', "timeout must be a number of seconds"),
        ("max_attempts=2.5", "max_attempts must be an int"),
        ('backoff=Backoff(base_seconds=float("nan"))', "backoff base_seconds"),
        ('backoff=Backoff(cap_seconds=float("inf"))', "backoff cap_seconds"),
    ],
    ids=["timeout-nan", "timeout-inf", "max-attempts-float", "backoff-nan", "backoff-inf"],
)
def test_serve_refuses_a_task_option_out_of_range_at_start(
    db_dsn: str, tmp_path: Path, option: str, needle: str
) -> None:
    env = _app(
        tmp_path,
        "bad_option_app",
        "from notifyq import Backoff, Registry\n"
        "registry = Registry()\n"
        f"@registry.task('t', {option})\n"
        "async def t(job):\n"
        "    return None\n",
    )
    done = _notifyq("serve", "--app", "bad_option_app:registry", env={**env, "NOTIFYQ_DSN": db_dsn})
    line = _one_line(done, 2)
    assert "invalid setting app: cannot import 'bad_option_app'" in line and needle in line, line


# -- class 10: DSNs --------------------------------------------------------------------------------

_SECRET = "S3cr"  # every password below contains it; no output may
_BAD_DSNS = {
    "key-value": (f"host={ADMIN_HOST} user=postgres password={_SECRET}KV dbname=x", "NOTIFYQ_DSN"),
    "sslmode": (f"postgresql://postgres:{_SECRET}PW@{ADMIN_HOST}:{ADMIN_PORT}/x?sslmode=bogus", "sslmode"),
    "port-range": (f"postgresql://postgres:{_SECRET}PW@{ADMIN_HOST}:99999/x", "port"),
    "port-text": (f"postgresql://postgres:{_SECRET}PW@{ADMIN_HOST}:abc/x", "port"),
    "ipv6": (f"postgresql://postgres:{_SECRET}PW@[::1/x", "IPv6"),
    "at-in-password": (f"postgresql://postgres:{_SECRET}@etPW@{ADMIN_HOST}:{ADMIN_PORT}/x", "percent-encode"),
    "slash-in-password": (
        f"postgresql://postgres:123/{_SECRET}@{ADMIN_HOST}:{ADMIN_PORT}/x",
        "percent-encode",
    ),
}
_COMMANDS = {
    "serve": ["serve", "--app", "examples.hello:registry"],
    "migrate": ["migrate"],
    "check": ["check"],
    "status": ["status"],
    "enqueue": ["enqueue", "t"],
    "jobs-list": ["jobs", "list"],
}


# Every bad DSN through the daemon and one CLI command, and every command with two of them: the check
# is one function, run as settings load, and a process per pair cost 40 s of the suite.
_PAIRS = sorted(
    {(case, command) for case in _BAD_DSNS for command in ("serve", "check")}
    | {(case, command) for case in ("key-value", "at-in-password") for command in _COMMANDS}
)


@pytest.mark.parametrize(("case", "command"), _PAIRS)
def test_a_bad_dsn_is_one_line_from_every_command_and_no_part_of_its_password(
    case: str, command: str
) -> None:
    dsn, needle = _BAD_DSNS[case]
    done = _notifyq(*_COMMANDS[command], env={"NOTIFYQ_DSN": dsn})
    line = _one_line(done, 2)
    assert line.startswith("notifyq: invalid setting dsn: ") and needle in line, line
    for piece in (_SECRET, "etPW"):
        assert piece not in done.stdout + done.stderr, done.stdout + done.stderr


def test_a_bad_listen_dsn_is_named(db_dsn: str) -> None:
    done = _notifyq(
        "serve",
        "--app",
        "examples.hello:registry",
        env={"NOTIFYQ_DSN": db_dsn, "NOTIFYQ_LISTEN_DSN": "host=127.0.0.1 dbname=x"},
    )
    line = _one_line(done, 2)
    assert line.startswith("notifyq: invalid setting listen_dsn: ") and "NOTIFYQ_LISTEN_DSN" in line, line


@pytest.mark.parametrize(
    ("variable", "value"), [("PGPORT", "abc"), ("PGPORT", "99999"), ("PGSSLMODE", "bogus")]
)
def test_a_bad_libpq_variable_is_one_line(db_dsn: str, variable: str, value: str) -> None:
    env = {"PGHOST": ADMIN_HOST, "PGDATABASE": database_of(db_dsn), variable: value}
    done = _notifyq("status", env=env)
    assert _one_line(done, 2).startswith(f"notifyq: invalid environment variable {variable}: ")


async def test_an_encoded_password_reaches_no_log_and_no_metrics(db_dsn: str, pg_tmp: Path) -> None:
    # Trust auth ignores the password, so the daemon really connects with it and logs its DSN.
    password = f"{_SECRET}@et/PW?#"
    dsn = with_login(db_dsn, password=password)
    daemon = DaemonProcess(dsn, "examples.hello:registry", pg_tmp / "d.log", http_address="127.0.0.1:0")
    try:
        ready = await daemon.wait_event("daemon_ready")
        port = await daemon.http_port()
        metrics = await anyio.to_thread.run_sync(_get, f"http://127.0.0.1:{port}/metrics")
    finally:
        daemon.close()
    assert ":***@" in ready["dsn"], ready
    log = (pg_tmp / "d.log").read_text()
    assert _SECRET not in log and _SECRET not in metrics


# -- class 11: one line, not a traceback ------------------------------------------------------------


def test_a_metrics_port_in_use_is_one_line_naming_the_setting(db_dsn: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        done = _notifyq(
            "serve",
            "--app",
            "examples.hello:registry",
            env={"NOTIFYQ_DSN": db_dsn, "NOTIFYQ_HTTP_ADDRESS": taken},
        )
    line = _one_line(done, 1)
    assert f"http_address {taken} is in use" in line, line


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("def broken(:\n", "SyntaxError: "),
        ("raise RuntimeError('no config here')\n", "RuntimeError: no config here"),
        ("import no_such_module_here\n", "No module named 'no_such_module_here'"),
        ("from notifyq import Registry\nregistry = Registry()\n", "has no tasks"),
        (
            "from notifyq import Registry\nregistry = Registry()\n"
            "@registry.task('t')\ndef t(job):\n    yield job\n",
            "is a generator function",
        ),
        (
            "from notifyq import Registry\nregistry = Registry()\n"
            "@registry.task('t')\nasync def t(job):\n    yield job\n",
            "is a generator function",
        ),
    ],
    ids=["syntax-error", "raises", "imports-missing", "empty-registry", "sync-generator", "async-generator"],
)
def test_an_app_that_cannot_serve_is_one_line(db_dsn: str, tmp_path: Path, source: str, needle: str) -> None:
    env = _app(tmp_path, "hostile_app", source)
    done = _notifyq("serve", "--app", "hostile_app:registry", env={**env, "NOTIFYQ_DSN": db_dsn})
    line = _one_line(done, 2)
    assert line.startswith("notifyq: invalid setting app: ") and needle in line, line


async def test_jobs_retry_that_hits_a_dedup_conflict_is_one_line(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    old = await conn.fetchval("INSERT INTO notifyq.jobs (task, dedup_key) VALUES ('a', 'k') RETURNING id")
    await conn.execute("UPDATE notifyq.jobs SET state = 'failed', finished_at = now() WHERE id = $1", old)
    await conn.execute("INSERT INTO notifyq.jobs (task, dedup_key) VALUES ('a', 'k')")
    done = _notifyq("jobs", "retry", str(old), "--dsn", db_dsn)
    line = _one_line(done, 1)
    assert line == f"notifyq: job {old} cannot be retried: another queued or running job holds its dedup_key"
    assert await conn.fetchval("SELECT state::text FROM notifyq.jobs WHERE id = $1", old) == "failed"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--run-at", "+inf"], "--run-at '+inf'"),
        (["--run-at", "+nan"], "--run-at '+nan'"),
        (["--run-at", "+1e16"], "--run-at '+1e16'"),
        (["--priority", "5000"], "--priority: must be between -1000 and 1000"),
        (["--priority", "-99999999999"], "--priority: must be between -1000 and 1000"),
        (["--max-attempts", "99999999999"], "--max-attempts: must be between 1 and 1000"),
    ],
)
async def test_enqueue_out_of_range_is_one_line_naming_the_flag(
    conn: asyncpg.Connection, db_dsn: str, args: list[str], needle: str
) -> None:
    done = _notifyq("enqueue", "t", "--dsn", db_dsn, *args)
    assert needle in _one_line(done, 2)
    assert await conn.fetchval("SELECT count(*) FROM notifyq.jobs") == 0


def test_a_misspelled_variable_is_warned_about(db_dsn: str) -> None:
    done = _notifyq("jobs", "list", "--dsn", db_dsn, env={"NOTIFYQ_CONCURENCY": "4"})
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == (
        "notifyq: warning: NOTIFYQ_CONCURENCY is not a setting; did you mean NOTIFYQ_CONCURRENCY?"
    )


async def test_serve_logs_a_misspelled_variable(db_dsn: str, pg_tmp: Path) -> None:
    daemon = DaemonProcess(
        db_dsn, "examples.hello:registry", pg_tmp / "d.log", extra_env={"NOTIFYQ_RETENTION": "60"}
    )
    try:
        event = await daemon.wait_event("unknown_setting")
    finally:
        daemon.close()
    assert (event["variable"], event["did_you_mean"], event["level"]) == (
        "NOTIFYQ_RETENTION",
        "NOTIFYQ_RETENTION_SECONDS",
        "warning",
    )


# -- class 12 (part): enqueue() refuses NaN as SQL does ----------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
async def test_enqueue_refuses_non_finite_floats_and_writes_nothing(
    conn: asyncpg.Connection, bad: float
) -> None:
    with pytest.raises(
        ValueError, match=r"^payload\['order'\]\['lines'\]\[1\]: NaN and Infinity are not JSON"
    ):
        await enqueue(conn, "t", {"order": {"lines": [1.5, bad]}})
    jobs = [NewJob("t", {"ok": None}), NewJob("t", [0, {"price": bad}])]
    with pytest.raises(ValueError, match=r"^jobs\[1\]\.payload\[1\]\['price'\]: NaN"):
        await enqueue_many(conn, jobs)
    assert await conn.fetchval("SELECT count(*) FROM notifyq.jobs") == 0
    # None is still null, and finite floats pass.
    job_id = await enqueue(conn, "t", {"none": None, "x": 2.5})
    stored = await conn.fetchval("SELECT payload::text FROM notifyq.jobs WHERE id = $1", job_id)
    assert stored == '{"x": 2.5, "none": null}'
