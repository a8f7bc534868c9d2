"""`notifyq dev`: a private Postgres cluster from the machine's own binaries, for trying notifyq.

`PrivateCluster` runs initdb/pg_ctl on a data folder of its own (as the `postgres` user when we are
root, since initdb refuses root). The test suite uses the same class for tests that stop, restart or
break Postgres, so those never touch a shared server.
"""

from __future__ import annotations

import importlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from notifyq import logs
from notifyq.errors import NotifyqError


def pg_bindir() -> Path:
    """Folder of initdb and pg_ctl: `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    if shutil.which("initdb"):
        return Path(shutil.which("initdb") or "").parent
    raise NotifyqError(
        "no PostgreSQL server binaries found (need initdb and pg_ctl; install the postgresql package)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateCluster:
    """A throwaway Postgres listening on 127.0.0.1:`port`, trust auth, data in `data_dir`."""

    def __init__(self, data_dir: Path, port: int, settings: dict[str, str] | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        # fsync off: a throwaway cluster never outlives an OS crash. synchronous_commit stays on, so
        # that tests stopping it with -m immediate see what a real server would keep.
        self.settings = {"fsync": "off", "full_page_writes": "off", **(settings or {})}
        self.bindir = pg_bindir()
        self._as_postgres = os.geteuid() == 0

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _cmd(self, *argv: str) -> list[str]:
        if self._as_postgres:
            return ["runuser", "-u", "postgres", "--", *argv]
        return list(argv)

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self._cmd(*argv), capture_output=True, text=True, check=False)
        if check and done.returncode != 0:
            raise NotifyqError(f"{Path(argv[0]).name} failed: {(done.stderr or done.stdout).strip()}")
        return done

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._as_postgres and self._run("test", "-x", str(self.data_dir.parent), check=False).returncode:
            raise NotifyqError(
                f"the postgres user cannot reach {self.data_dir.parent}; pick a data folder it can "
                "traverse, e.g. --data-dir /tmp/notifyq-dev"
            )
        if self._as_postgres:
            pg = pwd.getpwnam("postgres")
            os.chown(self.data_dir, pg.pw_uid, pg.pw_gid)
        self.data_dir.chmod(0o700)
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )

    def start(self) -> None:
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.data_dir}",
        ]
        options += [f"-c {k}={v}" for k, v in self.settings.items()]
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.data_dir / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            " ".join(options),
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-m",
            mode,
            "-w",
            "stop",
            check=False,
        )

    def running(self) -> bool:
        done = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "status", check=False)
        return done.returncode == 0


def run_dev(*, data_dir: str | None, port: int, app: str, demo_jobs: int, echo: Callable[[str], Any]) -> None:
    """Start a private cluster, migrate it, serve `app` and feed it demo jobs until Ctrl-C."""
    from notifyq.config import load_settings
    from notifyq.daemon import Daemon, loop_options
    from notifyq.registry import load_app

    folder = Path(data_dir) if data_dir else Path(tempfile.gettempdir()) / f"notifyq-dev-{os.getuid()}"
    cluster = PrivateCluster(folder, port or free_port())
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        # SIGHUP (a closed terminal) and a SIGTERM before the daemon handles it: leave through the
        # `finally` below, so that the private Postgres (a daemon of its own) is never orphaned.
        if not stopping:
            raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    echo(f"notifyq dev: starting a private Postgres in {cluster.data_dir} on port {cluster.port}")
    cluster.init()
    try:
        cluster.start()
        registry = load_app(app)
        module = importlib.import_module(app.partition(":")[0])
        settings = load_settings(
            dsn=cluster.dsn,
            app=app,
            concurrency=8,
            lease_seconds=10,
            shutdown_timeout_seconds=5,
            http_address="127.0.0.1:0",
        )
        example = next((n for n in registry.names if "greet" in n), registry.names[0])
        echo(
            f'notifyq dev: try  psql {cluster.dsn} -c "INSERT INTO notifyq.jobs (task, payload) '
            f"VALUES ('{example}', '{{}}')\""
        )
        echo("notifyq dev: Ctrl-C to stop")
        daemon = Daemon(settings, registry)
        daemon.stop_signals += (signal.SIGHUP,)
        anyio.run(_dev_main, settings, daemon, module, demo_jobs, backend_options=loop_options())
    finally:
        stopping = True
        # The daemon's SIGTERM handling ends with it (asyncio restores the default, which would kill us
        # before Postgres is stopped): ignore further signals until it is.
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, on_signal)
        echo("notifyq dev: stopping the private Postgres")
        cluster.stop()


async def _dev_main(settings: Any, daemon: Any, module: Any, demo_jobs: int) -> None:
    from notifyq import migrate
    from notifyq.store import connect

    conn = await connect(settings.dsn)
    try:
        await migrate.apply(conn)
    finally:
        await conn.close()
    feed = getattr(module, "enqueue_burst", None)
    log = logs.get("dev")
    async with anyio.create_task_group() as tg:

        async def serve() -> None:
            await daemon.run()
            tg.cancel_scope.cancel()  # the daemon stopped (Ctrl-C): stop feeding it too

        tg.start_soon(serve)
        await daemon.ready.wait()
        if feed is None:
            return
        conn = await connect(settings.dsn)
        try:
            ids = await feed(conn, demo_jobs)
            log.info("demo_jobs_enqueued", jobs=len(ids))
            while True:
                await anyio.sleep(3)
                await feed(conn, 1)
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close()
