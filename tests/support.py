"""Test helpers: databases cloned from a migrated template, daemons in-process and as processes."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from notifyq import logs
from notifyq.config import load_settings
from notifyq.daemon import Daemon
from notifyq.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("NOTIFYQ_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def dsn_for(database: str, admin: str = ADMIN_DSN) -> str:
    base, _, _ = admin.rpartition("/")
    return f"{base}/{database}"


async def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.01) -> Any:
    """Wait until `predicate()` (sync or async) is truthy; fail naming `what` after `timeout` s.

    Used only where no event exists to wait on: state in another process or in Postgres.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if hasattr(value, "__await__"):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await anyio.sleep(every)


class LogCapture(io.StringIO):
    """A stream for structlog JSON lines that tests can search."""

    def isatty(self) -> bool:
        return False

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = [json.loads(line) for line in self.getvalue().splitlines() if line.startswith("{")]
        return [e for e in found if name is None or e.get("event") == name]


@asynccontextmanager
async def running_daemon(
    dsn: str, registry: Registry, log: LogCapture | None = None, **settings: Any
) -> AsyncIterator[Daemon]:
    """A daemon in this event loop; stopped gracefully (and awaited) on exit."""
    logs.configure("json", "debug", stream=log or LogCapture())
    defaults: dict[str, Any] = {"http_address": "off", "poll_interval_seconds": 30.0}
    daemon = Daemon(load_settings(dsn=dsn, **{**defaults, **settings}), registry)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: daemon.run(handle_signals=False))
        with anyio.fail_after(10):
            await daemon.ready.wait()
        try:
            yield daemon
        finally:
            daemon.stop()
            # The task group waits for run() to return: that is the graceful stop under test.


async def count_states(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch("SELECT state::text, count(*) FROM notifyq.jobs GROUP BY 1")
    return {r[0]: r[1] for r in rows}


class DaemonProcess:
    """`python -m notifyq serve` as a real process, with its JSON log in a file."""

    def __init__(
        self, dsn: str, app: str, log_path: Path, extra_env: dict[str, str] | None = None, **settings: Any
    ) -> None:
        self.log_path = log_path
        env = {
            **os.environ,
            "NOTIFYQ_DSN": dsn,
            "NOTIFYQ_APP": app,
            "NOTIFYQ_LOG_FORMAT": "json",
            "NOTIFYQ_HTTP_ADDRESS": "off",
            "PYTHONPATH": str(ROOT),
        }
        for key, value in settings.items():
            env[f"NOTIFYQ_{key.upper()}"] = str(value)
        env.update(extra_env or {})
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "notifyq", "serve"],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if name is None or event.get("event") == name:
                    found.append(event)
        return found

    async def wait_event(self, name: str, timeout: float = 15.0, **match: Any) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            if self.proc.poll() is not None and not self._matching(name, match):
                tail = self.log_path.read_text()[-2000:]
                raise AssertionError(f"daemon exited ({self.proc.returncode}) before {name}: {tail}")
            hits = self._matching(name, match)
            return hits[0] if hits else None

        found: dict[str, Any] = await wait_for(find, timeout, f"log event {name} {match}", every=0.02)
        return found

    def _matching(self, name: str, match: dict[str, Any]) -> list[dict[str, Any]]:
        return [e for e in self.events(name) if all(e.get(k) == v for k, v in match.items())]

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


class StallProxy:
    """A loopback TCP proxy to Postgres that can blackhole the connections it carries.

    `stall()` stops passing bytes on every connection open at that moment while keeping their sockets
    open (a half-dead network path); connections made afterwards flow normally.
    """

    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5432) -> None:
        self._target = (target_host, target_port)
        self._flowing: list[asyncio.Event] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> StallProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for flowing in self._flowing:
            flowing.set()

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def stall(self) -> None:
        for flowing in self._flowing:
            flowing.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        flowing = asyncio.Event()
        flowing.set()
        self._flowing.append(flowing)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    await flowing.wait()
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def idle_locks(conn: asyncpg.Connection) -> int:
    """How many idle locks (DESIGN section 4) daemons hold in this database's cluster."""
    n: int = await conn.fetchval(
        "SELECT count(*) FROM pg_locks"
        " WHERE locktype = 'advisory' AND classid = 7243 AND mode = 'ShareLock' AND granted"
    )
    return n


async def no_idle_locks(conn: asyncpg.Connection) -> bool:
    return await idle_locks(conn) == 0


async def settled_idle(daemon: Daemon, conn: asyncpg.Connection) -> None:
    """Wait until the daemon is idle for good: idle locks held and its post-idle re-check done, so
    that only a NOTIFY (or the poll) can find the next job."""
    await wait_for(lambda: idle_locks(conn), 5, "idle locks")
    registry = daemon.metrics.registry
    await wait_for(
        lambda: (registry.get_sample_value("notifyq_wakeups_total", {"source": "timer"}) or 0) >= 1,
        5,
        "the post-idle re-check",
    )


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m notifyq ...` from the repository root, as a newcomer would run it."""
    return subprocess.run(
        [sys.executable, "-m", "notifyq", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
