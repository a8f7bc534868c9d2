"""Test helpers: databases cloned from a migrated template, daemons in-process and as processes."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from notifyq import logs
from notifyq.config import load_settings
from notifyq.daemon import Daemon
from notifyq.devserver import PrivateCluster, free_port
from notifyq.errors import NotifyqError
from notifyq.metrics import WAKE_SOURCES
from notifyq.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("NOTIFYQ_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
# Where the shared server is and who we are there: every test derives hosts, ports and users from these,
# never from a literal, so that NOTIFYQ_TEST_ADMIN_DSN moves the whole suite.
_ADMIN = urllib.parse.urlsplit(ADMIN_DSN)
ADMIN_HOST = _ADMIN.hostname or "127.0.0.1"
ADMIN_PORT = _ADMIN.port or 5432
ADMIN_USER = urllib.parse.unquote(_ADMIN.username or "postgres")
ADMIN_PASSWORD = urllib.parse.unquote(_ADMIN.password) if _ADMIN.password else None


def dsn_for(database: str, admin: str = ADMIN_DSN) -> str:
    parts = urllib.parse.urlsplit(admin)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{database}"))


def database_of(dsn: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(dsn).path.lstrip("/"))


def with_login(
    dsn: str,
    *,
    user: str | None = None,
    password: str | None = None,
    host: str | None = None,
    port: int | None = None,
    query: str | None = None,
) -> str:
    """`dsn` with some of its parts replaced; a new `user` drops the old password unless one is given."""
    parts = urllib.parse.urlsplit(dsn)
    old_password = None if user is not None else parts.password
    user = user if user is not None else (parts.username or "")
    password = password if password is not None else old_password
    host = host if host is not None else (parts.hostname or "")
    port = port if port is not None else parts.port
    netloc = urllib.parse.quote(user, safe="")
    if password is not None:
        netloc += ":" + urllib.parse.quote(password, safe="")
    netloc += "@" + (f"[{host}]" if ":" in host else host)
    if port is not None:
        netloc += f":{port}"
    return urllib.parse.urlunsplit(
        parts._replace(netloc=netloc, query=parts.query if query is None else query)
    )


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


RECORDER = "tests.apps.recorder:registry"


def spawn(
    daemons: list[DaemonProcess],
    folder: Path,
    dsn: str,
    *,
    app: str = RECORDER,
    extra_env: dict[str, str] | None = None,
    **settings: Any,
) -> DaemonProcess:
    """Start a daemon process logging to `folder`/daemonN.log and add it to `daemons` (the fault
    suite's fixture closes them all)."""
    d = DaemonProcess(dsn, app, folder / f"daemon{len(daemons)}.log", extra_env=extra_env, **settings)
    daemons.append(d)
    return d


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

    async def http_port(self, timeout: float = 15.0) -> int:
        """The port the daemon's HTTP server bound (start it with `http_address="127.0.0.1:0"`): read back
        from its `http_listening` event rather than picked beforehand, when another process may take it."""
        event = await self.wait_event("http_listening", timeout)
        return int(str(event["address"]).rpartition(":")[2])

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

    def __init__(self, target_host: str = ADMIN_HOST, target_port: int = ADMIN_PORT) -> None:
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
        """The admin DSN for `database`, through this proxy."""
        return with_login(dsn_for(database), host="127.0.0.1", port=self.port)

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
    """How many idle locks (docs/design.md, section 4) daemons hold in `conn`'s database. pg_locks shows the whole
    cluster, where other tests' idle daemons hold locks of their own: only this database's count."""
    n: int = await conn.fetchval(
        "SELECT count(*) FROM pg_locks"
        " WHERE locktype = 'advisory' AND classid = 7243 AND mode = 'ShareLock' AND granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    return n


async def no_idle_locks(conn: asyncpg.Connection) -> bool:
    return await idle_locks(conn) == 0


# Three times the dispatcher's post-idle re-check delay (0.1 s, IDLE_RECHECK_SECONDS in worker/dispatcher.py).
SETTLE_QUIET_SECONDS = 0.3


def _dispatcher_reading(daemon: Daemon) -> tuple[dict[str, float], float]:
    registry = daemon.metrics.registry
    wakes = {
        source: registry.get_sample_value("notifyq_wakeups_total", {"source": source}) or 0.0
        for source in WAKE_SOURCES
    }
    return wakes, registry.get_sample_value("notifyq_claims_total") or 0.0


async def settled_idle(daemon: Daemon, conn: asyncpg.Connection, timeout: float = 10.0) -> None:
    """Wait until the daemon is idle for good, so that only a NOTIFY (or the safety poll) can find the next
    job: its idle locks are held, the re-check it makes after taking them has run, and no claim or turn is
    pending.

    The way into idle (worker/dispatcher.py, wakeup.py): a short claim asks the wake topic for the idle locks; once
    they are held the topic wakes the dispatcher (`notifyq_wakeups_total{source="idle"}`), which claims
    once more and then looks again 0.1 s later (`{source="timer"}`) before it waits for a NOTIFY or the
    poll. Seen from here: the locks are held, every idle wake-up seen was followed (in a later reading) by a
    timer wake-up, and then neither a wake-up nor a claim (`notifyq_claims_total`) for SETTLE_QUIET_SECONDS.
    The quiet period also covers a re-check already under way when this was called, and the claim that
    follows a wake-up (a wake-up is counted before its claim runs).
    """
    deadline = time.monotonic() + timeout
    last = _dispatcher_reading(daemon)
    changed_at = time.monotonic()
    recheck_due = False
    while True:
        held = await idle_locks(conn) > 0
        reading = _dispatcher_reading(daemon)
        now = time.monotonic()
        if reading != last:
            idle_woke = reading[0]["idle"] > last[0]["idle"]
            timer_woke = reading[0]["timer"] > last[0]["timer"]
            if idle_woke and not timer_woke:
                recheck_due = True
            elif timer_woke and not idle_woke:
                recheck_due = False
            elif idle_woke and timer_woke:
                # Both within one reading: their order is unknown, and the quiet period decides.
                recheck_due = False
            last, changed_at = reading, now
        if held and not recheck_due and now - changed_at >= SETTLE_QUIET_SECONDS:
            return
        if now > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for the daemon to settle idle (idle locks held: {held},"
                f" re-check due: {recheck_due}, last change {now - changed_at:.2f}s ago: {last})"
            )
        await anyio.sleep(0.01)


def start_cluster(cluster: PrivateCluster, attempts: int = 3) -> None:
    """Start `cluster` on a port picked at this moment, not when it was built (initdb takes seconds, and
    another process may bind a port picked that early); on a failed start, again on a fresh port."""
    for attempt in range(attempts):
        cluster.port = free_port()
        try:
            cluster.start()
            return
        except NotifyqError:
            stop_cluster_at(cluster.data_dir)  # a start that gave up waiting may still come up
            if attempt == attempts - 1:
                raise


def stop_cluster_at(data_dir: Path) -> None:
    """Stop whatever postmaster serves `data_dir` (found by its postmaster.pid, so this works for a
    cluster some other process started, e.g. a `notifyq dev` that was killed); SIGKILL as a last resort."""
    cluster = PrivateCluster(data_dir, 0)
    pid_file = cluster.data_dir / "postmaster.pid"
    if not pid_file.exists():
        return
    cluster.stop("immediate")
    if not pid_file.exists():
        return
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
        os.kill(pid, signal.SIGKILL)
    except (ValueError, ProcessLookupError):
        pass


@contextmanager
def private_cluster(data_dir: Path) -> Iterator[PrivateCluster]:
    """A throwaway cluster in `data_dir`, started on a late-picked port and stopped on every path (blocking
    calls, so that a cancelled test still runs the stop)."""
    cluster = PrivateCluster(data_dir, 0)
    try:
        cluster.init()
        start_cluster(cluster)
        yield cluster
    finally:
        stop_cluster_at(cluster.data_dir)


SHIPPED_ROLES = ("notifyq_owner", "notifyq_producer", "notifyq_worker", "notifyq_observer")


class ScratchRoles:
    """Role names of one test's own, for the shipped role scripts (sql/roles/) and for logins.

    Roles are cluster-wide: under their shipped names two test runs at once would share (and drop) each
    other's roles, and a cluster that serves a real notifyq would lose its own. So the scripts run with
    every shipped name replaced by one of this test's; the `scratch_roles` fixture drops them all.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.names: dict[str, str] = {}

    def name(self, role: str) -> str:
        """This test's name for `role` (a shipped name, or any word such as `login_owner`)."""
        return self.names.setdefault(role, f"{self.prefix}_{role}")

    def script(self, path: Path) -> str:
        pattern = r"\b(" + "|".join(SHIPPED_ROLES) + r")\b"
        return re.sub(pattern, lambda m: self.name(m.group(1)), path.read_text())

    async def drop(self, conn: asyncpg.Connection) -> None:
        """Drop the roles that exist, with what they own or were granted in `conn`'s database (the only
        one they were used in) and on shared objects."""
        existing = [
            r[0]
            for r in await conn.fetch(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY($1::text[])", list(self.names.values())
            )
        ]
        if existing:
            quoted = ", ".join(f'"{name}"' for name in existing)
            await conn.execute(f"DROP OWNED BY {quoted}")
            await conn.execute(f"DROP ROLE {quoted}")


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
