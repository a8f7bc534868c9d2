"""The notifier: one LISTEN connection, shared by every topic that needs to hear from Postgres.

A topic (see `Topic`) names a channel, handles its notifications, and may keep session state on this
connection (the wake-up's idle locks, notifyq/wakeup.py). Wake-ups are the first topic; cancelling a
running job, schedule changes and awaited results are the ones to come, each on a channel of its own.

Lifecycle. Connect (a direct session, never through a transaction pooler), end this daemon's previous
backend if a half-open socket left it behind, LISTEN on every topic's channel and on this daemon's own
probe channel, tell each topic it is connected (the wake-up then re-scans: whatever was notified while
the connection was down is found, never lost), and bring each topic's session state up to date. While
connected, the loop applies topic changes as they are asked for and sends a probe every
`probe_interval`: a NOTIFY to its own channel that must come back within `probe_timeout`. A probe that
does not come back (a half-open or stalled socket) or a closed connection ends the session; topics are
told, and the loop reconnects after a capped, jittered backoff.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import anyio
import asyncpg

from notifyq import logs, queries
from notifyq.errors import DatabaseConfigError, DatabaseUnavailable
from notifyq.metrics import Metrics
from notifyq.retry import Backoff
from notifyq.store import connect, describe

# Keepalives let the server notice a vanished listener within about 25 s and end its backend (and with
# it the idle locks) even when we cannot tell it ourselves.
_SESSION_SETTINGS = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "25000",
    # Its own, over a database's or role's (a tiny one there failed every probe); its statements are tiny.
    "statement_timeout": "10000",
}
_RECONNECT = Backoff(base_seconds=0.05, factor=2.0, cap_seconds=15.0, jitter=0.5)


class Session(Protocol):
    """What a topic may do on the notifier's connection: run a named statement."""

    async def execute(self, name: str, *args: object) -> None: ...


class Topic(Protocol):
    """A subscriber to one channel, with optional session state on the notifier's connection."""

    channel: str

    @property
    def pending(self) -> bool:
        """True while the topic has session work for `sync` to do."""
        ...

    def bind(self, changed: Callable[[], None]) -> None: ...

    async def sync(self, session: Session) -> None: ...

    def on_message(self, payload: str) -> None: ...

    def on_connected(self) -> None: ...

    def on_disconnected(self) -> None: ...


class _Session:
    """The notifier's connection as topics see it: named statements, bounded in time."""

    def __init__(self, conn: asyncpg.Connection, timeout: float) -> None:
        self._conn = conn
        self._timeout = timeout

    async def execute(self, name: str, *args: object) -> None:
        with anyio.fail_after(self._timeout):
            await self._conn.execute(queries.get(name), *args)


class Notifier:
    def __init__(
        self,
        dsn: str | None,
        topics: Sequence[Topic],
        worker_id: uuid.UUID,
        metrics: Metrics,
        probe_interval: float,
    ) -> None:
        self._dsn = dsn
        self._topics = list(topics)
        for topic in self._topics:
            topic.bind(self._on_change)
        self._metrics = metrics
        self._probe_interval = probe_interval
        self._probe_timeout = max(0.5, min(2.0, probe_interval))
        self._probe_channel = f"notifyq.probe.{worker_id.hex}"
        # NOTIFY as one simple-protocol statement: one transaction per probe, where pg_notify($1) with a
        # bound channel costs two (asyncpg's Parse round trip, then the execution). The channel is made
        # here from a UUID's hex digits, never from input, and quoted as an identifier all the same.
        self._probe_sql = 'NOTIFY "' + self._probe_channel.replace('"', '""') + '"'
        # Names this daemon's LISTEN session, so that ending a stale one can never hit a peer's.
        self._application_name = f"notifyq-listener:{worker_id.hex}"
        self._changed = anyio.Event()
        self._probe_ack = anyio.Event()
        self._lost = False
        self._connected = False
        self._stale_pid: int | None = None
        self._probed = False  # the current session got a probe through
        self._log = logs.get("listener")

    @property
    def connected(self) -> bool:
        return self._connected

    def _on_change(self) -> None:
        self._changed.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        failures = 0  # sessions in a row that failed or never got a probe through
        ready = False
        while True:
            conn: asyncpg.Connection | None = None
            self._probed = False
            try:
                conn = await self._connect()
                self._connected = True
                self._metrics.listener_connected.set(1)
                if failures:
                    self._metrics.listener_reconnects.inc()
                    self._log.info("listener_reconnected", after_failures=failures)
                await self._end_stale_session(conn)
                for topic in self._topics:
                    topic.on_connected()
                if not ready:
                    ready = True
                    task_status.started()
                await self._session(conn)
                self._log.warning("listener_lost", reason="connection closed or probe unanswered")
            except DatabaseConfigError as exc:
                if not ready:
                    raise  # wrong credentials at start-up: say so and stop
                # Later (a rotated password, a dropped role): keep trying, the pool may still work.
                self._log.error("listener_error", error=str(exc), failures=self._failures(failures))
            except (
                DatabaseUnavailable,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                OSError,
                TimeoutError,
            ) as exc:
                count = self._failures(failures)
                if count == 1 or count % 10 == 0:
                    self._log.warning("listener_error", error=describe(exc), failures=count)
            finally:
                self._connected = False
                for topic in self._topics:
                    topic.on_disconnected()
                self._metrics.listener_connected.set(0)
                if conn is not None:
                    self._stale_pid = conn.get_server_pid()
                    conn.terminate()
            # Back off from the first failure on, and keep backing off while sessions never get a probe
            # through: a connection that opens but cannot carry notifications must not spin.
            failures = self._failures(failures)
            await anyio.sleep(_RECONNECT.delay(failures))

    def _failures(self, before: int) -> int:
        """Failures in a row, this session's end included: a session that got a probe through was
        healthy, so its end is the first failure since."""
        return 1 if self._probed else before + 1

    async def _end_stale_session(self, conn: asyncpg.Connection) -> None:
        """End our previous backend if it is still there (a half-open socket): it holds idle locks that
        make producers NOTIFY for nothing, and it pins the NOTIFY queue by listening without reading."""
        if self._stale_pid is None:
            return
        pid, self._stale_pid = self._stale_pid, None
        try:
            with anyio.fail_after(self._probe_timeout * 2):
                await conn.execute(queries.get("end_stale_listener"), pid, self._application_name)
        except (asyncpg.PostgresError, TimeoutError) as exc:
            self._log.info("stale_listener_not_ended", pid=pid, error=describe(exc))

    async def _connect(self) -> asyncpg.Connection:
        self._lost = False
        # Statement cache off: this connection runs three tiny statements, and it must work even
        # where prepared statements are not welcome.
        conn = await connect(
            self._dsn,
            statement_cache_size=0,
            server_settings={**_SESSION_SETTINGS, "application_name": self._application_name},
        )
        try:
            conn.add_termination_listener(self._on_terminated)
            with anyio.fail_after(10.0):
                for topic in self._topics:
                    await conn.add_listener(topic.channel, _receiver(topic))
                await conn.add_listener(self._probe_channel, self._on_probe)
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def _session(self, conn: asyncpg.Connection) -> None:
        """Serve one connection until it is lost or stops answering probes; `_probed` once one came
        back."""
        next_probe = anyio.current_time() + self._probe_interval
        session = _Session(conn, self._probe_timeout * 2)
        while True:
            # Reset first, then look at the flags: a change made after this line is never missed.
            self._changed = anyio.Event()
            if self._lost or conn.is_closed():
                return
            pending = [topic for topic in self._topics if topic.pending]
            if pending:
                for topic in pending:
                    await topic.sync(session)
                continue
            if anyio.current_time() >= next_probe:
                if not await self._probe(conn):
                    return
                self._probed = True
                next_probe = anyio.current_time() + self._probe_interval
                continue
            with anyio.move_on_after(next_probe - anyio.current_time()):
                await self._changed.wait()

    async def _probe(self, conn: asyncpg.Connection) -> bool:
        self._probe_ack = anyio.Event()
        with anyio.move_on_after(self._probe_timeout):
            await conn.execute(self._probe_sql)
            await self._probe_ack.wait()
            return True
        return False

    def _on_probe(self, _conn: Any, _pid: int, _channel: str, _payload: str) -> None:
        self._probe_ack.set()

    def _on_terminated(self, _conn: Any) -> None:
        self._lost = True
        self._changed.set()


def _receiver(topic: Topic) -> Callable[[Any, int, str, str], None]:
    def receive(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        topic.on_message(payload)

    return receive
