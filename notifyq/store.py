"""The one database seam: a connection pool and one method per named query.

Driver errors are mapped here. Anything that means "the database is not reachable or will not take
writes right now" becomes `DatabaseUnavailable`, which every loop answers by backing off; bad
credentials or a missing database become `DatabaseConfigError`, which stops start-up. A read-only
error also drops the pool's connections, so that after a failover the next ones reach the new primary.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from notifyq import queries
from notifyq.config import redact_dsn
from notifyq.errors import (
    ConfigError,
    DatabaseConfigError,
    DatabaseUnavailable,
    LockUnavailable,
    QueryError,
    StatementTimeout,
)
from notifyq.models import (
    Claim,
    GaugeReading,
    Job,
    JobDetail,
    JobState,
    JobSummary,
    OrphanGroup,
    Outcome,
    OutcomeKind,
    PeriodicSpec,
    QueueReading,
    QueueStat,
    RescuedJob,
    ScheduleDetail,
    ScheduleRow,
    TickWrite,
    WorkerInfo,
    WorkerRow,
)

# Errors that say "not now": the statement may succeed if tried again later, so every loop backs off.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,  # class 08
    asyncpg.exceptions.InterfaceError,  # connection closed or in a bad state on our side
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.TransactionRollbackError,  # class 40: serialization failure, deadlock
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: disk full, out of memory, connections
    asyncpg.exceptions.LockNotAvailableError,  # 55P03
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, cancel, crash
    asyncpg.exceptions.PostgresSystemError,  # class 58: I/O errors
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # 25006: a standby or a read-only primary
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,
)
_FATAL: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.InvalidPasswordError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    asyncpg.exceptions.InvalidCatalogNameError,
)


# How long declaring the code's schedules may wait on a lock (a name another transaction is inserting).
DECLARE_LOCK_TIMEOUT = "500ms"

# A row's place in a queue's claim order: (priority, run_at, id).
Position = tuple[int, datetime, int] | tuple[None, None, None]


async def _light_reset(conn: asyncpg.Connection) -> None:
    """What a connection needs before it goes back to our pool. asyncpg's default reset sends
    `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` on every release: a second round
    trip for each of our statements, for session state our pool never creates (it only runs the named
    statements, in autocommit)."""
    if conn.is_in_transaction():
        await conn.execute(queries.get("rollback"))


def describe(exc: BaseException) -> str:
    """A one-line, secret-free description of a driver error."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _millis(seconds: float) -> str:
    """A server setting in milliseconds; at least 1 (0 would turn the timeout off)."""
    return str(max(1, round(seconds * 1000)))


def map_error(exc: BaseException) -> BaseException:
    """The notifyq error for a driver error; anything that is not a driver error is returned as is."""
    if isinstance(exc, asyncpg.exceptions.ClientConfigurationError):
        # An InterfaceError, but no retry mends it (an sslmode or a PG* variable asyncpg refuses): a
        # configuration error, which stops start-up instead of being waited out as an outage.
        return ConfigError(f"invalid connection settings: {describe(exc)}")
    if isinstance(exc, _FATAL):
        return DatabaseConfigError(describe(exc))
    if isinstance(exc, TimeoutError | asyncpg.exceptions.QueryCanceledError):
        return StatementTimeout(f"statement timed out ({describe(exc)})")
    if isinstance(exc, asyncpg.exceptions.LockNotAvailableError):
        return LockUnavailable(describe(exc))
    if isinstance(exc, _UNAVAILABLE):
        return DatabaseUnavailable(describe(exc))
    if isinstance(exc, asyncpg.PostgresError):
        error = QueryError(describe(exc))
        error.sqlstate = getattr(exc, "sqlstate", None)
        return error
    return exc


async def connect(dsn: str | None, *, connect_timeout: float = 10.0, **kwargs: Any) -> asyncpg.Connection:
    """One direct connection, with driver errors mapped and the DSN kept out of messages."""
    try:
        return await asyncpg.connect(dsn, timeout=connect_timeout, **kwargs)
    except (ValueError, OverflowError) as exc:
        if isinstance(exc, asyncpg.exceptions.InterfaceError):
            raise map_error(exc) from None
        # From parsing the DSN or a PG* variable (int() of a port, a port beyond 65535); the text may
        # quote a piece of the DSN, so it is not repeated.
        raise ConfigError(
            f"invalid connection settings: the DSN or a PG* variable: {type(exc).__name__}"
        ) from None
    except BaseException as exc:
        mapped = map_error(exc)
        if mapped is exc:
            raise
        raise mapped from None


class Store:
    """Pool plus named statements. Create with `await Store.open(...)`, finish with `close()`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._q = queries.load()
        # Told each named statement's round trip (name, seconds) when it succeeded: the daemon's metrics.
        self.observe: Callable[[str, float], None] | None = None
        # For /readyz. available: False from the first "unavailable" error until a statement succeeds.
        # writable: False from a read-only error until a write (claim, heartbeat, outcome) succeeds, so
        # that reads going through on a read-only node do not make it look healthy.
        self.available = True
        self.unavailable_reason = ""
        self.writable = True

    @classmethod
    async def open(
        cls,
        dsn: str | None,
        *,
        max_size: int = 4,
        statement_cache_size: int = 100,
        command_timeout: float = 30.0,
        application_name: str = "notifyq",
        synchronous_commit: bool = True,
        statement_timeout: float | None = None,
        lock_timeout: float | None = None,
    ) -> Store:
        """`statement_timeout` and `lock_timeout`: seconds, set on the server for this pool's sessions,
        over whatever the DSN's options, the role or the database set (a startup setting outranks those)."""
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=0,  # no background reconnect loop of its own (it logs a traceback per try)
                max_size=max_size,
                statement_cache_size=statement_cache_size,
                command_timeout=command_timeout,
                timeout=10.0,
                server_settings={
                    "application_name": application_name,
                    # Session-level, so only this pool's statements are affected.
                    **({} if synchronous_commit else {"synchronous_commit": "off"}),
                    **(
                        {}
                        if statement_timeout is None
                        else {"statement_timeout": _millis(statement_timeout)}
                    ),
                    **({} if lock_timeout is None else {"lock_timeout": _millis(lock_timeout)}),
                },
                reset=_light_reset,
            )
        except BaseException as exc:
            mapped = map_error(exc)
            if mapped is exc:
                raise
            raise mapped from None
        return cls(pool)

    async def close(self) -> None:
        try:
            await self._pool.close()
        except Exception:
            self._pool.terminate()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with self._pool.acquire() as conn:
                yield conn
            self.available = True
        except BaseException as exc:
            if isinstance(exc, asyncpg.exceptions.ReadOnlySQLTransactionError):
                self.writable = False
                await self._pool.expire_connections()
            mapped = map_error(exc)
            if mapped is exc:
                raise
            if isinstance(mapped, DatabaseUnavailable):
                self.available = False
                # A table lock (or a server too busy to answer in time) is not an unreachable server.
                self.unavailable_reason = (
                    "database statements time out (a lock on notifyq.jobs, or an overloaded server)"
                    if isinstance(mapped, StatementTimeout)
                    else "database unreachable"
                )
            raise mapped from None

    async def _fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        async with self._conn() as conn:
            began = time.perf_counter()
            rows: list[asyncpg.Record] = await conn.fetch(self._q[name], *args)
            if self.observe is not None:
                self.observe(name, time.perf_counter() - began)
            return rows

    async def _execute(self, name: str, *args: Any) -> None:
        async with self._conn() as conn:
            began = time.perf_counter()
            await conn.execute(self._q[name], *args)
            if self.observe is not None:
                self.observe(name, time.perf_counter() - began)

    def query(self, name: str) -> str:
        """A named statement's text, for a caller that runs it on a connection of its own."""
        return self._q[name]

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for callers outside the daemon's hot path (CLI, client helpers)."""
        async with self._conn() as conn:
            yield conn

    # -- the job path ---------------------------------------------------------------------------

    async def claim_head(
        self,
        queue: str,
        tasks: Sequence[str],
        max_attempts: Sequence[int | None],
        limit: int,
        lease_seconds: float,
        worker_id: uuid.UUID,
        max_bytes: int,
    ) -> list[Claim]:
        """Claim up to `limit` jobs of one queue, from its head, and payloads of about `max_bytes`."""
        rows = await self._fetch(
            "claim_head", queue, list(tasks), list(max_attempts), limit, lease_seconds, worker_id, max_bytes
        )
        self.writable = True
        return [_claim_from_row(r) for r in rows]

    async def claim_jobs(
        self,
        queues: Sequence[str],
        tasks: Sequence[str],
        max_attempts: Sequence[int | None],
        limit: int,
        lease_seconds: float,
        worker_id: uuid.UUID,
        after: Sequence[Position],
        max_bytes: int,
    ) -> list[Claim]:
        """Claim up to `limit` jobs across `queues`; in each, after `after[i]` (the last row of an
        earlier claim; (None, None, None) for its head)."""
        rows = await self._fetch(
            "claim_jobs",
            list(queues),
            list(tasks),
            list(max_attempts),
            limit,
            lease_seconds,
            worker_id,
            [p for p, _, _ in after],
            [r for _, r, _ in after],
            [i for _, _, i in after],
            max_bytes,
        )
        self.writable = True
        return [_claim_from_row(r) for r in rows]

    async def begin(
        self, claims: Sequence[Claim], worker_id: uuid.UUID, entered_through: datetime | None
    ) -> tuple[set[int], datetime | None]:
        """Start buffered jobs (count their attempt) whose lease is still current, and move this worker's
        entered_through mark; returns the ids started and their start time."""
        rows = await self._fetch(
            "begin_jobs",
            [c.job.id for c in claims],
            [c.lease_token for c in claims],
            worker_id,
            entered_through,
        )
        return {r[0] for r in rows}, rows[0][1] if rows else None

    async def mark_entered(self, worker_id: uuid.UUID, entered_through: datetime) -> None:
        await self._execute("mark_entered", worker_id, entered_through)

    async def record(self, outcomes: Sequence[Outcome]) -> tuple[set[int], set[int]]:
        """Write outcomes in fenced statements (plain successes in one, the rest in another); returns
        the ids written, and the ids skipped because another session holds their row locked (still
        this lease's: write them again later). Any other id lost its lease."""
        plain = [o for o in outcomes if o.state is JobState.SUCCEEDED and o.result is None]
        rest = [o for o in outcomes if not (o.state is JobState.SUCCEEDED and o.result is None)]
        written: set[int] = set()
        busy: set[int] = set()
        if plain:
            rows = await self._fetch(
                "complete_succeeded", [o.job_id for o in plain], [o.lease_token for o in plain]
            )
            _split(rows, written, busy)
        if rest:
            rows = await self._fetch(
                "record_outcomes",
                [o.job_id for o in rest],
                [o.lease_token for o in rest],
                [o.state.value for o in rest],
                [o.delay for o in rest],
                [o.refund for o in rest],
                [o.error for o in rest],
                [o.result for o in rest],
                [int(o.kind is OutcomeKind.SNOOZED) for o in rest],
            )
            _split(rows, written, busy)
        return written, busy

    async def extend(
        self,
        held: dict[int, uuid.UUID],
        lease_seconds: float,
        worker: WorkerInfo,
        entered_through: datetime | None = None,
    ) -> tuple[set[int], set[int]]:
        """Extend every lease in `held` and refresh this worker's row; returns the ids extended, and the
        ids still held but locked by another session (not extended, not lost)."""
        rows = await self._fetch(
            "extend_leases",
            list(held.keys()),
            list(held.values()),
            lease_seconds,
            worker.id,
            worker.hostname,
            worker.pid,
            worker.queues,
            worker.tasks,
            worker.concurrency,
            entered_through,
            worker.schedules,
        )
        extended: set[int] = set()
        busy: set[int] = set()
        _split(rows, extended, busy)
        return extended, busy

    async def register_worker(self, worker: WorkerInfo) -> None:
        """Create (or refresh) this worker's row: a heartbeat that holds no lease."""
        await self.extend({}, worker.lease_seconds, worker)

    async def unregister_worker(self, worker_id: uuid.UUID) -> None:
        await self._execute("unregister_worker", worker_id)

    async def rescue_expired(
        self, limit: int = 1000, held: dict[int, uuid.UUID] | None = None
    ) -> list[RescuedJob]:
        """`held`: leases this daemon holds itself (id -> token), never rescued by it."""
        held = held or {}
        rows = await self._fetch("rescue_expired", limit, list(held), list(held.values()))
        return [RescuedJob(**r) for r in rows]

    async def prune_workers(self, older_than_seconds: float) -> None:
        await self._execute("prune_workers", older_than_seconds)

    async def prune_finished(self, older_than_seconds: float, limit: int = 1000) -> int:
        rows = await self._fetch("prune_finished", older_than_seconds, limit)
        return int(rows[0]["deleted"])

    async def next_run_delay(self, queues: Sequence[str], tasks: Sequence[str]) -> float | None:
        rows = await self._fetch("next_run_delay", list(queues), list(tasks))
        delay = rows[0]["delay"]
        return None if delay is None else float(delay)

    async def jobs_without_handler(
        self, queues: Sequence[str], tasks: Sequence[str], limit: int = 20
    ) -> list[OrphanGroup]:
        rows = await self._fetch("jobs_without_handler", list(queues), list(tasks), limit)
        return [OrphanGroup(**r) for r in rows]

    # -- admin ----------------------------------------------------------------------------------

    async def live_workers(self) -> list[WorkerRow]:
        return [WorkerRow(**r) for r in await self._fetch("live_workers")]

    async def show_job(self, job_id: int) -> JobDetail | None:
        rows = await self._fetch("show_job", job_id)
        return JobDetail(**rows[0]) if rows else None

    async def list_jobs(
        self, state: str | None, queue: str | None, task: str | None, limit: int
    ) -> list[JobSummary]:
        return [JobSummary(**r) for r in await self._fetch("list_jobs", state, queue, task, limit)]

    async def queue_stats(self, max_age: float | None = None) -> QueueReading:
        """The jobs per queue, task and state: the daemons' shared reading, counted at most `max_age`
        seconds ago; or, with no `max_age`, counted now without writing anything (see stats.sql)."""
        if max_age is None:
            rows = await self._fetch("queue_stats_now")
        else:
            rows = await self._fetch("queue_stats", max_age)
        taken_at = rows[0]["taken_at"] if rows else None
        stats = [
            QueueStat(r["queue"], r["task"], r["state"], r["jobs"], r["oldest_age"])
            for r in rows
            if r["queue"] is not None
        ]
        return QueueReading(stats, taken_at)

    async def gauge_reading(self, max_age: float) -> GaugeReading:
        """The daemons' gauges: queue_stats(max_age), the live daemons and the database's health."""
        r = (await self._fetch("gauge_reading", max_age))[0]
        stats = [QueueStat(q, t, s, n, age) for q, t, s, n, age in orjson.loads(r["counts"])]
        return GaugeReading(
            queues=QueueReading(stats, r["taken_at"]),
            workers_alive=r["workers_alive"],
            served=set(zip(r["served_queues"], r["served_tasks"], strict=True)),
            dead_tuples=r["dead_tuples"],
            oldest_xact_age=r["oldest_xact_age"],
            usage=r["usage"],
        )

    # -- schedules (migration 0007) ------------------------------------------------------------------

    async def schedules_for_pass(self, after: str, limit: int) -> list[ScheduleRow]:
        """The schedules named after `after`, `limit` at most, in name order."""
        return [ScheduleRow(**r) for r in await self._fetch("schedules_for_pass", after, limit)]

    async def enqueue_ticks(
        self,
        row: ScheduleRow,
        through: datetime,
        next_tick: datetime | None,
        ticks: Sequence[tuple[datetime, bool]],
    ) -> TickWrite:
        """Move `row`'s last_tick to `through` and make a job per tick, if the row is still as read."""
        r = (
            await self._fetch(
                "enqueue_ticks",
                row.name,
                row.last_tick,
                row.updated_at,
                through,
                next_tick,
                [t for t, _ in ticks],
                [b for _, b in ticks],
            )
        )[0]
        return TickWrite(
            advanced=r["advanced"],
            skipped=r["skipped"],
            made=r["made"],
            locked=r["locked"],
            made_backfilled=r["made_backfilled"],
        )

    async def set_next_tick(self, row: ScheduleRow, next_tick: datetime | None) -> None:
        await self._execute("set_next_tick", row.name, next_tick, row.updated_at)

    async def set_schedule_error(self, row: ScheduleRow, error: str) -> None:
        await self._execute("set_schedule_error", row.name, error, row.updated_at)

    async def upsert_code_schedules(self, schedules: Sequence[PeriodicSpec]) -> int:
        """Write the code's schedules; returns how many were skipped, held locked by someone else."""
        if not schedules:
            return 0
        args = (
            [p.name for p in schedules],
            [p.cron for p in schedules],
            [p.timezone for p in schedules],
            [p.queue for p in schedules],
            [p.task for p in schedules],
            [p.payload_json for p in schedules],
            [p.priority for p in schedules],
            [p.max_attempts for p in schedules],
            [p.backfill.total_seconds() for p in schedules],
            [p.skip_overlap for p in schedules],
        )
        async with self._conn() as conn:
            try:
                async with conn.transaction():
                    # A name another transaction is inserting makes the INSERT wait for it, and a lock
                    # cannot be skipped there: the wait is bounded instead, and all are tried again later.
                    await conn.execute(self._q["local_lock_timeout"], DECLARE_LOCK_TIMEOUT)
                    rows = await conn.fetch(self._q["upsert_code_schedules"], *args)
            except asyncpg.exceptions.LockNotAvailableError:
                return len(schedules)
        return int(rows[0]["held"])

    async def endpoint_disabled(self, name: str) -> str | None:
        """Why the endpoint is disabled, or None while it is enabled."""
        rows = await self._fetch("endpoint_disabled", name)
        return str(rows[0]["reason"]) if rows else None

    async def disable_endpoint(self, name: str, reason: str) -> None:
        await self._execute("disable_endpoint", name, reason)

    async def enable_endpoint(self, name: str) -> bool:
        """False when it was not disabled."""
        return bool(await self._fetch("enable_endpoint", name))

    async def list_disabled_endpoints(self) -> list[tuple[str, str, datetime]]:
        rows = await self._fetch("list_disabled_endpoints")
        return [(r["name"], r["reason"], r["disabled_at"]) for r in rows]

    async def list_schedules(self, name: str | None = None) -> list[ScheduleDetail]:
        return [ScheduleDetail(**r) for r in await self._fetch("list_schedules", name)]

    async def set_schedule_enabled(self, name: str, enabled: bool) -> bool:
        """False when there is no such schedule."""
        return bool(await self._fetch("set_schedule_enabled", name, enabled))

    async def trigger_schedule(self, name: str) -> int | None:
        """The id of a job made from the schedule now, or None when there is no such schedule."""
        rows = await self._fetch("trigger_schedule", name)
        return int(rows[0]["id"]) if rows else None

    async def prune_code_schedules(self) -> list[str]:
        return [r["name"] for r in await self._fetch("prune_code_schedules")]


def _split(rows: list[asyncpg.Record], done: set[int], busy: set[int]) -> None:
    """Rows of (id, busy) from a statement that skips rows locked by another session."""
    for r in rows:
        (busy if r[1] else done).add(r[0])


_LONG_DIGITS = re.compile(r"\d{19}")
_LONG_DIGITS_BYTES = re.compile(rb"\d{19}")


def _claim_from_row(r: asyncpg.Record) -> Claim:
    payload: Any = None
    error: str | None = None
    try:
        payload = decode_payload(r["payload"])
    except (ValueError, RecursionError) as exc:  # nested deeper than Python's recursion limit, not UTF-8
        # Its type says it for these two; another ValueError (an integer past Python's 4,300 digits)
        # needs its message.
        plain = isinstance(exc, RecursionError | UnicodeDecodeError)
        error = type(exc).__name__ if plain else f"{type(exc).__name__}: {str(exc)[:200]}"
    job = Job(
        id=r["id"],
        queue=r["queue"],
        task=r["task"],
        payload=payload,
        attempt=r["attempts"],
        max_attempts=r["max_attempts"],
        priority=r["priority"],
        run_at=r["run_at"],
        created_at=r["created_at"],
        lease_token=r["lease_token"],
        unclear_crashes=r["unclear_crashes"],
        snoozes=r["snoozes"],
    )
    return Claim(
        job=job, lease_token=r["lease_token"], waited=r["waited"], decode_error=error, size=len(r["payload"])
    )


PRESENTABLE_DEPTH = 64  # levels of nested JSON shown back as JSON; what SQL nested deeper, as text


def presentable(text: str | bytes) -> tuple[Any, str | None]:
    """Stored JSON (a payload, a result) for showing: (value, None), or (None, its text) when it cannot be
    decoded or nests deeper than PRESENTABLE_DEPTH. SQL producers are not held to the API's depth limit,
    and JSON encoders give up a few hundred levels down (orjson at 255)."""
    try:
        value = decode_payload(text)
    except (RecursionError, ValueError):
        pass
    else:
        if _depth_within(value, PRESENTABLE_DEPTH):
            return value, None
    return None, text if isinstance(text, str) else text.decode("utf-8", "replace")


def _depth_within(value: Any, limit: int) -> bool:
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth >= limit:
                return False
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return True


def decode_payload(text: str | bytes) -> Any:
    """JSON text from jsonb to Python, exactly. orjson is fast but turns integers beyond 64 bits into
    floats and refuses numbers beyond a double (1e400), both valid jsonb; any text with a 19-digit run
    takes the standard library's exact path instead, so no stored payload is altered or stops a claim.
    Bytes that are not UTF-8 raise UnicodeDecodeError (a ValueError)."""
    if isinstance(text, bytes):
        exact = _LONG_DIGITS_BYTES.search(text) is not None
    else:
        exact = _LONG_DIGITS.search(text) is not None
    if not exact:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


def safe_dsn(dsn: str | None) -> str:
    """For messages: the DSN without its password, or a note that libpq variables are in use."""
    return redact_dsn(dsn) if dsn else "(from PG* environment variables)"
