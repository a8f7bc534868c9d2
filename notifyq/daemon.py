"""The composition root: builds every part, owns the root task group, handles signals.

Start-up: connect (retrying with backoff while the database is away; bad credentials stop here), check
that the schema is exactly the one this notifyq knows, register the worker row, then start the parts,
each reporting ready: listener (LISTEN is up), completer, heartbeat, maintenance, http; then the
dispatcher claims. Shutdown: the first SIGTERM/SIGINT stops claiming and drains; a second one cancels
running jobs at once. Outcomes are flushed, the worker row removed, and `run()` returns normally.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import uuid
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import anyio

from notifyq import logs, migrate
from notifyq.api.server import ApiServer
from notifyq.callbacks.builtin import CallbackTask, callback_hosts
from notifyq.callbacks.builtin import install as install_callbacks
from notifyq.callbacks.task import TASK as CALLBACK_TASK
from notifyq.config import Settings
from notifyq.errors import DatabaseUnavailable, NotifyqError
from notifyq.http import HttpServer
from notifyq.metrics import Metrics
from notifyq.models import Claim, WorkerInfo
from notifyq.notifier import Notifier
from notifyq.registry import Registry
from notifyq.retry import Backoff
from notifyq.stats import Overview
from notifyq.store import Store, safe_dsn
from notifyq.systemd import SystemdNotifier
from notifyq.wakeup import WakeSource, WakeTopic, Wakeup
from notifyq.worker.claimer import Claimer, ClaimScope
from notifyq.worker.completer import Completer
from notifyq.worker.dispatcher import Dispatcher
from notifyq.worker.executor import Executor
from notifyq.worker.gauges import GaugeRefresher
from notifyq.worker.heartbeat import Heartbeat
from notifyq.worker.leases import Leases
from notifyq.worker.maintenance import Maintenance
from notifyq.worker.outcomes import describe_error, unstarted
from notifyq.worker.prefetch import Prefetch
from notifyq.worker.scheduler import Scheduler, ScheduleTopic
from notifyq.worker.starter import Starter


@dataclass(frozen=True, slots=True)
class _Parts:
    worker: WorkerInfo
    leases: Leases
    completer: Completer
    notifier: Notifier
    dispatcher: Dispatcher
    executor: Executor
    prefetch: Prefetch
    heartbeat: Heartbeat
    maintenance: Maintenance
    gauges: GaugeRefresher
    scheduler: Scheduler


# After the drain, how long outcomes may take to reach the database before they are left to rescue.
_FLUSH_SECONDS = 5.0
# After a second signal, how long to wait for handlers before the process leaves regardless.
_FORCE_EXIT_SECONDS = 10.0
_CONNECT_RETRY = Backoff(base_seconds=0.5, factor=2.0, cap_seconds=30.0, jitter=0.5)


def _force_exit() -> None:
    logs.get("daemon").error("forced_exit", reason="handlers still running after the second signal")
    os._exit(1)


def loop_options() -> dict[str, bool]:
    """anyio backend options for running the daemon: uvloop where it is installed (a dependency except
    on Windows). It is the same asyncio API on a faster loop: the drain benchmark moved about 30%
    more jobs per second with it (benchmarks/README.md)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def notifyq_version() -> str:
    try:
        return version("notifyq")
    except PackageNotFoundError:
        return "0+unknown"


class Daemon:
    """`notifyq serve`: one process, one root task group."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        # `notifyq dev` adds SIGHUP (its terminal closed): a signal the loop handles stops the daemon
        # gracefully, where a Python handler's exception lands wherever the loop happened to be.
        self.stop_signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
        # Every daemon serves the built-in callback task, with or without an app of its own.
        self.callbacks = CallbackTask(settings, f"notifyq/{notifyq_version()}")
        if registry.get(CALLBACK_TASK) is None:
            install_callbacks(registry, self.callbacks)
        self.settings = settings
        self.registry = registry
        self.worker_id = uuid.uuid4()
        self.ready = anyio.Event()
        self._schedules = registry.schedules
        self.metrics = Metrics(
            settings.queues, registry.names, notifyq_version(), schedules=[p.name for p in self._schedules]
        )
        self.metrics.worker_slots.set(settings.concurrency)
        self.callbacks.metrics = self.metrics
        self.metrics.known_callback_hosts(callback_hosts(self.callbacks.endpoints))
        self.http: HttpServer | None = None
        self.api = (
            None
            if settings.api_address == "off"
            else ApiServer(settings, self.callbacks.endpoints, self.callbacks.allowed)
        )
        self.systemd = SystemdNotifier()
        self._store: Store | None = None
        self._parts: _Parts | None = None
        self._dispatcher: Dispatcher | None = None
        self._stop_requested = 0
        self._stopped_cleanly = False
        self._stuck_logged = False
        self._starting: anyio.CancelScope | None = None  # made in run(): scopes need a running loop
        self._force_exit_timer: threading.Timer | None = None
        self.worker_info = WorkerInfo(
            id=self.worker_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            queues=list(settings.queues),
            tasks=registry.names,
            concurrency=settings.concurrency,
            lease_seconds=settings.lease_seconds,
            schedules=[p.name for p in self._schedules],
        )
        self._log = logs.get("daemon").bind(worker_id=str(self.worker_id))

    def stop(self) -> None:
        """Graceful stop (what SIGTERM does); a second call stops at once."""
        self._stop_requested += 1
        if self._stop_requested == 1:
            self.systemd.stopping()
        if not self.ready.is_set():
            if self._starting is not None:
                self._starting.cancel()  # still starting: nothing claimed yet, nothing to drain
        elif self._dispatcher is None:
            return
        elif self._stop_requested == 1:
            self._dispatcher.stop()
        else:
            self._dispatcher.stop_now()

    async def run(self, *, handle_signals: bool = True) -> None:
        """Serve until stopped. Returns normally after a clean stop."""
        async with anyio.create_task_group() as outer:
            if handle_signals:
                outer.start_soon(self._watch_signals)
            try:
                # HTTP first: /healthz answers (and /readyz says "starting") while we wait for the database.
                await self._start_http(outer)
                await self._run()
            finally:
                outer.cancel_scope.cancel()
                if self._force_exit_timer is not None:
                    self._force_exit_timer.cancel()

    async def _run(self) -> None:
        store: Store | None = None
        self._starting = anyio.CancelScope()
        if self._stop_requested:
            self._starting.cancel()
        with self._starting:
            store = await self._start()
        if store is None:
            self._log.info("daemon_stopped", before="ready")
            return
        try:
            await self._serve(store)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                # Best effort: a stale row is pruned later, and must not hide why we are stopping.
                with contextlib.suppress(NotifyqError):
                    await store.unregister_worker(self.worker_id)
                await store.close()
            self.systemd.close()
            if self._stopped_cleanly:  # else `after_crash` says what happened, at error level
                self._log.info("daemon_stopped")

    async def _start(self) -> Store:
        """Connect, check the schema and register, retrying with backoff while the database is away.

        Bad credentials, a missing database or a schema this notifyq does not match stop here with the
        reason; an unreachable or read-only database is waited for.
        """
        s = self.settings
        failures = 0
        while True:
            store: Store | None = None
            try:
                store = await Store.open(
                    s.dsn,
                    max_size=6,
                    statement_cache_size=s.statement_cache_size,
                    # Every statement is small; a 10 s bound keeps one hung connection from stalling a
                    # claim turn past the systemd watchdog (60 s in deploy/notifyq.service).
                    command_timeout=min(10.0, s.lease_seconds / 3),
                    # The server's own limit a little beyond it, whatever the DSN's options, the role
                    # or the database say: `statement_timeout=1` there made every statement fail, and
                    # the daemon waited it out as an outage for ever.
                    statement_timeout=min(10.0, s.lease_seconds / 3) + 1.0,
                    # At-least-once tolerates losing the daemon's last writes in a database crash: a
                    # lost claim leaves the job queued, a lost outcome is rescued and run again.
                    synchronous_commit=s.synchronous_commit,
                )
                store.observe = self.metrics.observe_statement
                async with store.connection() as conn:
                    await migrate.ensure_current(conn)
                await store.register_worker(self.worker_info)
                return store
            except DatabaseUnavailable as exc:
                if store is not None:
                    await store.close()
                failures += 1
                delay = _CONNECT_RETRY.delay(failures)
                self._log.warning(
                    "database_unavailable",
                    error=str(exc),
                    dsn=safe_dsn(s.dsn),
                    retry_in_s=round(delay, 2),
                    failures=failures,
                )
                await anyio.sleep(delay)
            except BaseException:
                if store is not None:
                    with anyio.CancelScope(shield=True):
                        await store.close()
                raise

    async def _serve(self, store: Store) -> None:
        parts = self._build(store)
        self._store = store
        self._parts = parts
        self._dispatcher = parts.dispatcher
        self.callbacks.disabled = store.endpoint_disabled
        self.callbacks.disable = store.disable_endpoint
        try:
            await self._run_parts(parts)
            self._stopped_cleanly = True
        finally:
            parts.completer.dispose()
            with anyio.CancelScope(shield=True):
                await self.callbacks.aclose()

    def _build(self, store: Store) -> _Parts:
        """Wire the parts together; nothing starts here."""
        s = self.settings
        tasks = self.registry.names
        worker = self.worker_info
        wake = Wakeup()
        leases = Leases(fence_after=s.lease_seconds - s.heartbeat_interval)
        # Room for one batch's worth of outcomes while the previous is being written, and no more: during
        # an outage, every outcome waiting here is a job that may run again once its lease expires.
        starter = Starter(store, self.worker_id)
        completer = Completer(
            store,
            leases,
            self.metrics,
            buffer=max(2 * s.concurrency, 500),
            # A begun job given back unrun closes in the starter's mark only once its attempt is back.
            on_settled=lambda outcome: starter.entered(outcome.job_id, outcome.lease_token),
        )
        prefetch = Prefetch(s.prefetch, s.prefetch_max, self.metrics)
        executor = Executor(
            self.registry,
            prefetch,
            starter,
            completer,
            leases,
            self.metrics,
            s.concurrency,
            on_slot_free=lambda: wake.hint(WakeSource.SLOT),
        )
        wake_topic = WakeTopic(s.queues, wake)
        scheduler = Scheduler(store, self.metrics, self._schedules)
        notifier = Notifier(
            s.effective_listen_dsn,
            [wake_topic, ScheduleTopic(scheduler.changed)],
            self.worker_id,
            self.metrics,
            probe_interval=s.probe_interval_seconds,
        )
        scope = ClaimScope(
            queues=tuple(s.queues),
            tasks=tuple(tasks),
            max_attempts=tuple(self.registry[t].max_attempts for t in tasks),
            lease_seconds=s.lease_seconds,
            worker_id=self.worker_id,
        )
        dispatcher = Dispatcher(
            Claimer(store, scope, leases, self.metrics, on_claimed=prefetch.add),
            prefetch,
            executor,
            wake_topic,
            wake,
            self.metrics,
            poll_interval=s.poll_interval_seconds,
            shutdown_timeout=s.shutdown_timeout_seconds,
            on_turn=self._watchdog,
            # Turn at least twice per watchdog interval, so a stuck loop is what systemd restarts.
            tick=None if self.systemd.watchdog_interval is None else self.systemd.watchdog_interval / 2,
        )
        return _Parts(
            worker=worker,
            leases=leases,
            completer=completer,
            notifier=notifier,
            dispatcher=dispatcher,
            executor=executor,
            prefetch=prefetch,
            gauges=GaugeRefresher(store, self.metrics, s.stats_interval_seconds, self._on_reading),
            scheduler=scheduler,
            heartbeat=Heartbeat(
                store,
                leases,
                executor,
                worker,
                s.lease_seconds,
                s.heartbeat_interval,
                lambda: starter.entered_through,
            ),
            maintenance=Maintenance(
                store,
                s.queues,
                tasks,
                s.lease_seconds,
                s.retention_seconds,
                on_rescued=lambda: wake.hint(WakeSource.RESCUE),
                held=leases.snapshot,
            ),
        )

    async def _run_parts(self, parts: _Parts) -> None:
        """Start every part (each reports ready), claim until stopped, then flush outcomes."""
        flushed = anyio.Event()

        async def run_completer(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            try:
                await parts.completer.run(task_status=task_status)
            finally:
                flushed.set()

        async with anyio.create_task_group() as root:
            self._starting = anyio.CancelScope()  # a scope is entered once: a fresh one for this phase
            if self._stop_requested:
                self._starting.cancel()
            with self._starting:  # a stop before ready cancels the start-up (a listener still connecting)
                await root.start(parts.notifier.run)
                await root.start(run_completer)
                await root.start(parts.heartbeat.run)
                await root.start(parts.maintenance.run)
                await root.start(parts.gauges.run)
                await root.start(parts.scheduler.run)
                if self.api is not None:
                    await root.start(self.api.run)
            if self._starting.cancelled_caught:
                parts.completer.close(flush_seconds=0)
                root.cancel_scope.cancel()
                return
            s = self.settings
            self._log.info(
                "daemon_ready",
                queues=list(s.queues),
                tasks=self.registry.names,
                concurrency=s.concurrency,
                dsn=safe_dsn(s.dsn),
            )
            self.ready.set()
            self.systemd.ready(self._status_line(None))
            if self._stop_requested:  # a signal came during start-up
                parts.dispatcher.stop()
            await parts.dispatcher.run()
            if self.api is not None:
                self.api.stop()  # no new requests; the database's pool stays for the outcomes' flush
            parts.completer.close(flush_seconds=_FLUSH_SECONDS)
            await flushed.wait()  # bounded: the completer gives up at the flush deadline
            root.cancel_scope.cancel()

    async def _start_http(self, root: anyio.abc.TaskGroup) -> None:
        address = self.settings.http_host_port
        if address is None:
            return
        self.http = HttpServer(address[0], address[1], self.metrics.registry, self.readiness)
        await root.start(self.http.run)

    def readiness(self) -> tuple[bool, str]:
        """For /readyz: database reachable, listener connected, schema current."""
        if self._parts is None or self._store is None:
            return False, "starting"
        problems = []
        if not self._store.available:
            problems.append(self._store.unavailable_reason or "database unreachable")
        elif not self._store.writable:
            problems.append("database is read-only")
        if not self._parts.notifier.connected:
            problems.append("listener disconnected")
        if self._parts.gauges.schema_problem:
            problems.append(self._parts.gauges.schema_problem)
        stuck = self._parts.executor.stuck()
        if stuck is not None:
            problems.append(stuck)
        if self._stop_requested:
            problems.append("stopping")
        return not problems, "; ".join(problems) or "ok"

    def after_crash(self, exc: BaseException) -> bool:
        """Called once the event loop is gone by an exception that escaped it (a handler's loop callback
        or stray task raising SystemExit, a bug): log it at error level, and give the prefetch buffer back
        at once instead of leaving it to lease expiry. Running jobs are left to rescue: the one that
        brought the daemon down is among them, and its attempt stays counted. False when the daemon
        had not started serving or stopped cleanly."""
        if self._parts is None or self._stopped_cleanly:
            return False
        claims = self._parts.prefetch.take_all()
        self._log.error(
            "daemon_crashed",
            error=describe_error(exc),
            running=self._parts.executor.running_count,
            buffered=len(claims),
            note="an exception escaped the event loop: a handler's loop callback, stray task or thread?",
        )
        if claims:
            with contextlib.suppress(Exception):
                written = anyio.run(self._give_back, claims)
                self._log.warning("buffer_given_back_after_crash", jobs=len(claims), written=written)
        return True

    async def _give_back(self, claims: list[Claim]) -> int:
        with anyio.fail_after(5):
            store = await Store.open(self.settings.dsn, max_size=1)
            try:
                written, _ = await store.record([unstarted(claim) for claim in claims])
                return len(written)
            finally:
                await store.close()

    def _watchdog(self) -> None:
        """Tell systemd we are alive, unless the executor is stuck: then the missed pings are what makes
        systemd restart us (its jobs go back to the queue through rescue)."""
        stuck = self._parts.executor.stuck() if self._parts is not None else None
        if stuck is None:
            self.systemd.watchdog()
        elif not self._stuck_logged:
            self._stuck_logged = True
            self._log.error("executor_stuck", problem=stuck, note="systemd watchdog pings withheld")

    def _on_reading(self, overview: Overview) -> None:
        self.systemd.status(self._status_line(overview))

    def _status_line(self, overview: Overview | None) -> str:
        running = self._parts.executor.running_count if self._parts else 0
        line = f"{running}/{self.settings.concurrency} running"
        if overview is not None:
            line += f", {overview.total('queued')} queued, {overview.total('scheduled')} scheduled"
        return line

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(*self.stop_signals) as signals:
            async for signum in signals:
                self._log.info(
                    "signal_received",
                    signal=signal.Signals(signum).name,
                    graceful=self._stop_requested == 0,
                )
                self.stop()
                if self._stop_requested == 2:
                    # Sync handlers cannot be interrupted; if one holds the process, leave anyway.
                    # Their leases expire and the jobs are rescued elsewhere.
                    self._force_exit_timer = threading.Timer(_FORCE_EXIT_SECONDS, _force_exit)
                    self._force_exit_timer.daemon = True
                    self._force_exit_timer.start()
