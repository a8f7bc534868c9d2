"""Shared pieces: a fresh migrated database per run, a daemon process, machine facts, JSON output."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from notifyq import migrate

ROOT = Path(__file__).resolve().parent.parent


def admin_dsn() -> str:
    """The server the benchmarks run on: BENCH_ADMIN_DSN (read at each call: benchmarks.production points
    it at a cluster it starts), else the README's server."""
    return os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def dsn_for(database: str) -> str:
    return admin_dsn().rsplit("/", 1)[0] + "/" + database


async def fresh_database() -> str:
    """A new database with the notifyq schema; returns its DSN."""
    name = f"nq_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn())
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(dsn_for(name))
    try:
        await migrate.apply(conn)
    finally:
        await conn.close()
    return dsn_for(name)


async def insert_noops(conn: asyncpg.Connection, n: int) -> None:
    """N no-op jobs in one statement (one transaction)."""
    await conn.execute(
        "INSERT INTO notifyq.jobs (task) SELECT 'bench.noop' FROM generate_series(1, $1)", n, timeout=600
    )


async def drop_database(dsn: str) -> None:
    admin = await asyncpg.connect(admin_dsn())
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {dsn.rsplit('/', 1)[1]} WITH (FORCE)")
    finally:
        await admin.close()


@contextmanager
def daemon(
    dsn: str, log: Path, wait_ready: bool = True, **settings: Any
) -> Iterator[subprocess.Popen[bytes]]:
    """`notifyq serve` with the benchmark app, ready and idle (unless `wait_ready` is False: a daemon
    started on a backlog is not idle until it drained it)."""
    env = {
        **os.environ,
        "NOTIFYQ_DSN": dsn,
        "NOTIFYQ_APP": "benchmarks.apps:registry",
        "NOTIFYQ_LOG_FORMAT": "json",
        "NOTIFYQ_LOG_LEVEL": "warning",
        "NOTIFYQ_HTTP_ADDRESS": "off",
        "PYTHONPATH": str(ROOT),
    }
    env.update({f"NOTIFYQ_{k.upper()}": str(v) for k, v in settings.items()})
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "notifyq", "serve"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        # Ready and idle: it holds its idle locks (docs/design.md, section 4). Logs stay at warning, because
        # a JSON line per job would be part of what is measured.
        deadline = time.monotonic() + 30
        while wait_ready and not _idle_locks(dsn):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daemon did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _idle_locks(dsn: str) -> bool:
    out = subprocess.run(
        [
            "psql",
            dsn,
            "-Atc",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 7243"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        ],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() not in ("", "0")


def pgbench(dsn: str, script: Path, seconds: int, clients: int, *extra: str) -> float:
    """Run one pgbench script; returns transactions per second (without connection time)."""
    from notifyq.devserver import pg_bindir

    command = [str(pg_bindir() / "pgbench"), "-n", "-c", str(clients), "-j", str(min(clients, 2))]
    command += ["-T", str(seconds), *extra, "-f", str(script), dsn]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
    if found is None:
        raise RuntimeError(f"pgbench printed no tps: {done.stdout[-500:]} {done.stderr[-500:]}")
    return float(found.group(1))


def machine() -> dict[str, Any]:
    pg = subprocess.run(["psql", admin_dsn(), "-Atc", "SHOW server_version"], capture_output=True, text=True)
    settings = subprocess.run(
        [
            "psql",
            admin_dsn(),
            "-Atc",
            "SELECT string_agg(name || '=' || setting, ' ') FROM pg_settings WHERE name IN "
            "('shared_buffers', 'synchronous_commit', 'fsync', 'max_connections', 'wal_level', 'autovacuum')",
        ],
        capture_output=True,
        text=True,
    )
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "postgres": pg.stdout.strip(),
        "postgres_settings": settings.stdout.strip(),
        "kernel": platform.release(),
    }


def emit(name: str, result: dict[str, Any]) -> None:
    doc = {"benchmark": name, "machine": machine(), **result}
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))


def run(main: Any) -> None:
    anyio.run(main)
