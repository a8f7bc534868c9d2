"""Operating notifyq: /metrics (promtool-clean, every public name), health endpoints, the dashboard and
alert rules against a live daemon, systemd (verify, security, sd_notify), a real Prometheus scrape, and
`notifyq status`."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import anyio
import asyncpg
import pytest

from notifyq import Job, Registry, enqueue, migrate
from notifyq.devserver import free_port
from tests.support import ROOT, DaemonProcess, private_cluster, running_daemon, wait_for

pytestmark = pytest.mark.timeout(90)

PUBLIC_METRICS = [
    "notifyq_jobs_started_total", "notifyq_jobs_completed_total", "notifyq_job_duration_seconds_bucket",
    "notifyq_job_wait_seconds_bucket", "notifyq_jobs_running", "notifyq_worker_slots", "notifyq_claims_total",
    "notifyq_prefetch_jobs",
    "notifyq_claim_batch_size_bucket", "notifyq_statement_duration_seconds_bucket", "notifyq_wakeups_total", "notifyq_listener_connected",
    "notifyq_listener_reconnects_total", "notifyq_leases_lost_total", "notifyq_build_info",
    "notifyq_queue_jobs", "notifyq_queue_oldest_job_age_seconds", "notifyq_jobs_without_handler",
    "notifyq_workers_alive", "notifyq_notification_queue_usage_ratio", "notifyq_jobs_dead_tuples",
    "notifyq_oldest_transaction_age_seconds", "notifyq_stats_last_refresh_timestamp_seconds",
]  # fmt: skip
SECURITY_THRESHOLD = 2.0  # `systemd-analyze security` exposure score; documented in the README


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed (apt-get install {'prometheus' if 'prom' in name else 'systemd'})"
        )
    return path


async def get(port: int, path: str) -> tuple[int, str]:
    def fetch() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    return await anyio.to_thread.run_sync(fetch)


def quick_registry() -> Registry:
    registry = Registry()

    @registry.periodic("0 0 1 1 *", name="ops-yearly")  # exports the schedule series, never due here
    @registry.task("ops.quick")
    async def quick(job: Job) -> None:
        pass

    return registry


def exposed_names(text: str) -> set[str]:
    return {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }


async def test_metrics_are_promtool_clean_and_complete(conn: asyncpg.Connection, db_dsn: str) -> None:
    async with running_daemon(
        db_dsn, quick_registry(), http_address="127.0.0.1:0", stats_interval_seconds=1
    ) as d:
        assert d.http is not None and d.http.bound_port
        job_id = await enqueue(conn, "ops.quick")
        await wait_for(
            lambda: conn.fetchval("SELECT state = 'succeeded' FROM notifyq.jobs WHERE id = $1", job_id),
            5,
            "job",
        )
        status, text = await get(d.http.bound_port, "/metrics")
        assert status == 200
        for name in PUBLIC_METRICS:
            assert name in exposed_names(text), name
        lint = subprocess.run(
            [tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert lint.returncode == 0, lint.stdout + lint.stderr
        assert (lint.stdout + lint.stderr).strip() == ""
        assert await get(d.http.bound_port, "/healthz") == (200, "ok\n")
        assert await get(d.http.bound_port, "/readyz") == (200, "ok\n")
        assert (await get(d.http.bound_port, "/nope"))[0] == 404
        assert (
            'notifyq_jobs_completed_total{outcome="succeeded",queue="default",task="ops.quick"} 1.0' in text
        )


def dashboard_exprs() -> list[str]:
    dash = json.loads((ROOT / "grafana/notifyq.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def alert_exprs() -> list[str]:
    text = (ROOT / "deploy/prometheus/alerts.yml").read_text()
    return [m.group(1) for m in re.finditer(r"expr: \|?\n?((?:.+\n)+?)\s+for:", text)]


def test_dashboard_has_the_promised_panels_and_variables() -> None:
    dash = json.loads((ROOT / "grafana/notifyq.json").read_text())
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "job", "queue"} <= names
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for needed in (
        "throughput by outcome",
        "queue depth by state",
        "oldest",
        "p50 / p95 / p99",
        "duration p95",
        "slot utilisation",
        "failures and retries",
        "listener",
        "wake-ups by source",
        "statements p99",
        "schedule",
        "callbacks",
    ):
        assert needed in titles, needed
    assert len(alert_exprs()) == 11


def test_every_panel_and_alert_expression_parses(tmp_path: Path) -> None:
    rules = {"groups": [{"name": "parse", "rules": []}]}
    for i, expr in enumerate(dashboard_exprs() + alert_exprs()):
        concrete = expr.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$queue", ".*")
        rules["groups"][0]["rules"].append({"record": f"parse:check:{i}", "expr": concrete})
    path = tmp_path / "rules.json"  # JSON is YAML, so promtool reads it
    path.write_text(json.dumps(rules))
    checked = subprocess.run([tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_dashboard_and_alerts_use_only_live_metric_names(conn: asyncpg.Connection, db_dsn: str) -> None:
    used = set()
    for expr in dashboard_exprs() + alert_exprs():
        used |= set(re.findall(r"\bnotifyq_[a-z_]+", expr))
    async with running_daemon(
        db_dsn, quick_registry(), http_address="127.0.0.1:0", stats_interval_seconds=1
    ) as d:
        assert d.http is not None
        await enqueue(conn, "ops.quick")
        await wait_for(
            lambda: conn.fetchval("SELECT count(*) FROM notifyq.jobs WHERE state = 'succeeded'"), 5, "job"
        )
        _, text = await get(d.http.bound_port, "/metrics")
    missing = used - exposed_names(text)
    assert not missing, f"the dashboard or alerts use names no daemon exports: {sorted(missing)}"


def test_alert_rules_pass_their_unit_tests() -> None:
    done = subprocess.run(
        [tool("promtool"), "test", "rules", "alerts_test.yml"],
        cwd=ROOT / "deploy/prometheus",
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def installed_unit(tmp_path: Path) -> Path:
    """The shipped unit, with ExecStart pointing at this checkout's notifyq so verify can resolve it."""
    notifyq_bin = Path(sys.executable).with_name("notifyq")
    text = (ROOT / "deploy/notifyq.service").read_text().replace("/opt/notifyq/bin/notifyq", str(notifyq_bin))
    unit = tmp_path / "notifyq.service"
    unit.write_text(text)
    return unit


def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    unit = installed_unit(tmp_path)
    verify = subprocess.run([tool("systemd-analyze"), "verify", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    security = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=true", str(unit)], capture_output=True, text=True
    )
    assert security.returncode == 0, security.stderr
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout).group(1))  # type: ignore[union-attr]
    assert score < SECURITY_THRESHOLD, security.stdout[-2000:]
    text = unit.read_text()
    for needed in (
        "Type=notify",
        "WatchdogSec=",
        "KillMode=mixed",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "LoadCredential=",
        "PGPASSFILE",
        "/etc/notifyq/notifyq.toml",
    ):
        assert needed in text, needed
    stop = int(re.search(r"TimeoutStopSec=(\d+)", text).group(1))  # type: ignore[union-attr]
    assert stop > 30 + 5, "TimeoutStopSec must exceed the default shutdown timeout plus the outcome flush"


async def test_sd_notify_ready_watchdog_status_stopping(db_dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    messages: list[str] = []
    arrived: list[float] = []

    def collect_until(done: Callable[[], bool], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not done():
            assert time.monotonic() < deadline, f"sd_notify messages so far: {messages}"
            with contextlib.suppress(TimeoutError):
                messages.append(sock.recv(4096).decode())
                arrived.append(time.monotonic())

    def status_after_watchdog() -> bool:
        watchdog = _first(messages, "WATCHDOG=1")
        return watchdog >= 0 and any("STATUS=" in m for m in messages[watchdog + 1 :])

    d = DaemonProcess(
        db_dsn,
        "examples.hello:registry",
        tmp_path / "d.log",
        stats_interval_seconds=1,
        extra_env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"},
    )
    try:
        collect_until(status_after_watchdog, 20)
        # Stay idle a while: the claim loop must keep pinging from its wait, not only when it claims.
        idle_until = time.monotonic() + 3
        collect_until(lambda: time.monotonic() > idle_until, 10)
        d.signal(signal.SIGTERM)
        collect_until(lambda: _first(messages, "STOPPING=1") >= 0, 15)
        assert d.wait(15) == 0
    finally:
        d.close()
        sock.close()
    ready, watchdog, stopping = (_first(messages, k) for k in ("READY=1", "WATCHDOG=1", "STOPPING=1"))
    status = next(i for i, m in enumerate(messages) if "STATUS=" in m and i > watchdog)
    assert 0 <= ready < watchdog < status < stopping, messages
    pings = [t for t, m in zip(arrived, messages, strict=True) if "WATCHDOG=1" in m]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    # Not a speed figure: systemd kills a daemon whose pings are WATCHDOG_USEC (1 s) apart, so this is the
    # contract itself (the daemon pings up to four times per interval).
    assert len(pings) >= 4 and max(gaps) < 1.0, f"WATCHDOG_USEC is 1 s; gaps between pings: {gaps}"
    assert re.search(r"STATUS=\d+/10 running, \d+ queued, \d+ scheduled", messages[status]), messages[status]


def _first(messages: list[str], needle: str) -> int:
    return next((i for i, m in enumerate(messages) if needle in m), -1)


async def test_readyz_follows_the_database_and_the_daemon_heals(pg_tmp: Path) -> None:
    with private_cluster(pg_tmp / "pg") as cluster:
        conn = await asyncpg.connect(cluster.dsn)
        await migrate.apply(conn)
        await conn.close()
        ran = anyio.Event()
        registry = Registry()

        @registry.task("after.outage")
        async def after(job: Job) -> None:
            ran.set()

        async with running_daemon(
            cluster.dsn,
            registry,
            http_address="127.0.0.1:0",
            poll_interval_seconds=0.5,
            stats_interval_seconds=1,
        ) as d:
            assert d.http is not None
            port = d.http.bound_port
            assert await get(port, "/readyz") == (200, "ok\n")
            await anyio.to_thread.run_sync(lambda: cluster.stop("immediate"))
            status, why = await wait_for(_not_ready(port), 15, "/readyz to report the outage")
            assert status == 503 and ("database unreachable" in why or "listener disconnected" in why)
            assert (await get(port, "/healthz"))[0] == 200, "the process itself is alive"
            await anyio.to_thread.run_sync(cluster.start)
            await wait_for(_ready(port), 30, "/readyz to recover")
            conn = await asyncpg.connect(cluster.dsn)
            try:
                await enqueue(conn, "after.outage")
            finally:
                await conn.close()
            with anyio.fail_after(10):
                await ran.wait()


def _not_ready(port: int):  # type: ignore[no-untyped-def]
    async def check() -> tuple[int, str] | None:
        status, body = await get(port, "/readyz")
        return (status, body) if status == 503 else None

    return check


def _ready(port: int):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return (await get(port, "/readyz"))[0] == 200

    return check


def _start_prometheus(config: Path, tsdb: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Prometheus on a port picked just before it starts (it cannot report a port 0 back); if another
    process took the port in that moment, Prometheus exits at once and we try a fresh one."""
    for _ in range(3):
        port = free_port()
        with open(log, "ab") as out:
            prom = subprocess.Popen(
                [
                    tool("prometheus"),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tsdb}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            prom.wait(1.0)  # a lost race for the port ends it within a second; a good start keeps running
        except subprocess.TimeoutExpired:
            return prom, port
    raise AssertionError(f"Prometheus would not start: {log.read_text()[-2000:]}")


def _end_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, a bounded wait, then SIGKILL: never leave it running."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.timeout(120)
async def test_real_prometheus_scrapes_a_running_daemon(
    conn: asyncpg.Connection, db_dsn: str, pg_tmp: Path
) -> None:
    query = "sum(notifyq_jobs_completed_total)"
    prom_port = 0

    async def completed() -> float | None:
        status, body = await get(prom_port, f"/api/v1/query?query={urllib.parse.quote(query)}")
        if status != 200:
            return None
        result = json.loads(body)["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    # The daemon binds its own port first; Prometheus is pointed at what it bound.
    async with running_daemon(db_dsn, quick_registry(), http_address="127.0.0.1:0") as d:
        assert d.http is not None and d.http.bound_port
        config = pg_tmp / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n  - job_name: notifyq\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{d.http.bound_port}']}}]\n"
        )
        prom, prom_port = _start_prometheus(config, pg_tmp / "tsdb", pg_tmp / "prometheus.log")
        try:
            first = await wait_for(_safe(completed), 60, "Prometheus to scrape the daemon", every=0.5)
            for _ in range(5):
                await enqueue(conn, "ops.quick")
            await wait_for(_rises_above(completed, first + 4), 30, "the completed count to rise", every=0.5)
        finally:
            _end_process(prom)


def _safe(fn):  # type: ignore[no-untyped-def]
    async def check() -> object:
        try:
            value = await fn()
        except OSError:
            return None
        return None if value is None else value if value > 0 else 0.0001

    return check


def _rises_above(fn, floor: float):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        value = await fn()
        return value is not None and value >= floor

    return check


async def test_status_table_and_json(conn: asyncpg.Connection, db_dsn: str) -> None:
    await conn.execute(
        "INSERT INTO notifyq.jobs (task, queue, run_at) VALUES ('a', 'mail', now() - interval '90 seconds'),"
        " ('a', 'mail', now() + interval '1 hour'), ('b', 'default', now())"
    )
    async with running_daemon(db_dsn, quick_registry(), queues="other"):
        table = subprocess.run(
            [sys.executable, "-m", "notifyq", "status", "--dsn", db_dsn],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        as_json = subprocess.run(
            [sys.executable, "-m", "notifyq", "status", "--json", "--dsn", db_dsn],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["QUEUE", "QUEUED", "SCHEDULED", "RUNNING", "FAILED", "OLDEST"]
    mail = next(line.split() for line in lines if line.startswith("mail"))
    assert mail[1:5] == ["1", "1", "0", "0"] and mail[5].endswith("m")
    assert any(
        line.split()[1] == str(os.getpid())
        for line in lines
        if line and line[0].isalnum() and len(line.split()) > 4 and line.split()[1].isdigit()
    )
    doc = json.loads(as_json.stdout)
    queues = {q["queue"]: q for q in doc["queues"]}
    assert queues["mail"]["queued"] == 1 and queues["mail"]["scheduled"] == 1
    assert queues["mail"]["oldest_age_seconds"] >= 89
    assert [w["pid"] for w in doc["workers"]] == [os.getpid()]
    assert doc["workers"][0]["queues"] == ["other"] and doc["workers"][0]["concurrency"] == 10
    assert {(o["queue"], o["task"]) for o in doc["jobs_without_handler"]} == {("mail", "a"), ("default", "b")}
