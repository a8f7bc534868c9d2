"""The `notifyq` command: argv -> Settings -> the work. No SQL here.

Exit codes: 0 success; 1 a runtime failure (database, schema, handler app); 2 a usage or settings
error; 3 `check` found a problem.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import anyio
import click
import orjson

from notifyq import logs
from notifyq.config import Settings, load_settings, misspelled_environment
from notifyq.errors import AppLoadError, ConfigError, NotifyqError, QueryError, SchemaError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_CHECK = 3

# The producer contract's ranges (docs/design.md, section 2), checked here so that a value the driver
# cannot even send (beyond 32 bits) is refused naming the flag rather than a query argument.
PRIORITY_RANGE = (-1000, 1000)
MAX_ATTEMPTS_RANGE = (1, 1000)


def _default(name: str) -> str:
    """A setting's default, as help texts show it: from Settings, so the two cannot disagree."""
    value = Settings.model_fields[name].default
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _fail(message: str, code: int) -> None:
    click.echo(f"notifyq: {message}", err=True)
    sys.exit(code)


def _settings(config: str | None, *, logged: bool = False, **flags: Any) -> Settings:
    """Settings from flags, environment and file, or exit 2 with one line.

    A NOTIFYQ_* variable that is close to a setting's name is a typo that would be ignored silently:
    it is warned about, on stderr, or in the log when `logged` (serve's log is configured by then)."""
    try:
        settings = load_settings(config, **flags)
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
        raise  # unreachable; keeps type checkers honest
    if logged:
        logs.configure(settings.log_format, settings.log_level)
    for variable, near in misspelled_environment(os.environ):
        if logged:
            logs.get("config").warning("unknown_setting", variable=variable, did_you_mean=near)
        else:
            click.echo(f"notifyq: warning: {variable} is not a setting; did you mean {near}?", err=True)
    return settings


def _run(fn: Callable[[], Awaitable[Any]], backend_options: dict[str, bool] | None = None) -> Any:
    """Run one coroutine; map notifyq's errors to one clear line and an exit code."""
    try:
        return anyio.run(fn, backend_options=backend_options)
    except BaseException as exc:
        error = _unwrap(exc)
        if not isinstance(error, NotifyqError):
            from notifyq.store import map_error

            # Not ours: map what the driver and the OS raise (unreachable, read-only, a port in use:
            # exit 1; bad credentials, refused statements) to one line instead of a traceback.
            error = map_error(error)
        if isinstance(error, ConfigError):
            _fail(str(error), EXIT_USAGE)
        if isinstance(error, NotifyqError):
            _fail(str(error), EXIT_RUNTIME)
        if isinstance(error, KeyboardInterrupt):
            sys.exit(130)
        raise


def _unwrap(exc: BaseException) -> BaseException:
    """The one error inside task-group wrappers, so that it can be reported plainly."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def db_options(fn: F) -> F:
    fn = click.option(
        "--config",
        "config",
        type=click.Path(dir_okay=False),
        envvar="NOTIFYQ_CONFIG",
        help="TOML settings file.",
    )(fn)
    fn = click.option("--dsn", help="Postgres DSN (default: libpq PG* variables). Env: NOTIFYQ_DSN.")(fn)
    fn = click.option(
        "--log-format",
        type=click.Choice(["json", "console", "auto"]),
        help="Log format (default auto: console on a terminal, else JSON).",
    )(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="notifyq")
def main() -> None:
    """notifyq: Postgres as your job queue.

    \b
    Quick start:
      notifyq migrate --dsn postgresql://localhost/app      create the schema
      notifyq serve --dsn ... --app myproject.jobs:registry run the daemon
      notifyq enqueue emails.send --payload '{"to": "a@b.c"}'
      notifyq dev                                           try it with a private Postgres
    """


@main.command()
@db_options
@click.option("--app", help="MODULE:ATTR of your notifyq.Registry. Env: NOTIFYQ_APP.")
@click.option("--listen-dsn", help="Direct DSN for LISTEN when --dsn goes through PgBouncer.")
@click.option("--queues", help=f"Comma-separated queues to serve (default {_default('queues')}).")
@click.option("--concurrency", type=int, help=f"Jobs run at once (default {_default('concurrency')}).")
@click.option("--lease-seconds", type=float, help=f"Lease length (default {_default('lease_seconds')} s).")
@click.option(
    "--poll-interval-seconds",
    type=float,
    help=f"Safety poll, in case a NOTIFY is missed (default {_default('poll_interval_seconds')} s).",
)
@click.option(
    "--shutdown-timeout-seconds",
    type=float,
    help=f"Drain time on SIGTERM (default {_default('shutdown_timeout_seconds')} s).",
)
@click.option(
    "--http-address",
    help=f"HOST:PORT for /metrics, /healthz, /readyz, or 'off' (default {_default('http_address')}).",
)
def serve(config: str | None, **flags: Any) -> None:
    """Run the daemon: claim jobs and run their handlers until SIGTERM."""
    from notifyq.daemon import Daemon, loop_options
    from notifyq.registry import Registry, load_app

    settings = _settings(config, logged=True, **flags)
    # With no app, the daemon serves the built-in tasks only (notifyq.http callbacks).
    registry = Registry()
    if settings.app is not None:
        try:
            registry = load_app(settings.app)
        except AppLoadError as exc:
            _fail(str(exc), EXIT_USAGE)
            return
    _check_http_address(settings)
    if settings.api_address != "off":
        from notifyq.api.server import bind

        try:
            bind(settings.api_address).close()  # a port in use is one line now, not a crash later
        except ConfigError as exc:
            _fail(str(exc), EXIT_USAGE)
    daemon = Daemon(settings, registry)
    try:
        _run(daemon.run, loop_options())
    except BaseException as exc:
        if daemon.after_crash(exc):
            sys.exit(EXIT_RUNTIME)  # never 0 (a handler's SystemExit(0)): systemd must restart us
        raise


def _check_http_address(settings: Settings) -> None:
    """Bind the metrics address once before the daemon does, as it will (every address the host names,
    SO_REUSEADDR), so that a port in use is one line naming the setting, not an OSError of no origin."""
    address = settings.http_host_port
    if address is None:
        return
    host, port = address
    try:
        found = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG
        )
        for family, kind, proto, _, where in found:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(where)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:  # another process, perhaps a daemon still stopping: not a typo
            _fail(
                f"http_address {settings.http_address} is in use ({reason}): stop what holds it, or set"
                " --http-address / NOTIFYQ_HTTP_ADDRESS to a free HOST:PORT or 'off'",
                EXIT_RUNTIME,
            )
        _fail(f"invalid setting http_address: cannot listen on {settings.http_address}: {reason}", EXIT_USAGE)


@main.command()
@db_options
@click.option(
    "--sql",
    "print_sql",
    is_flag=True,
    help="Print the SQL that would run (pending migrations only) and change nothing.",
)
def migrate(config: str | None, print_sql: bool, **flags: Any) -> None:
    """Create or upgrade the notifyq schema. Safe to run again, and from two places at once."""
    from notifyq import migrate as migrations
    from notifyq.store import connect

    settings = _settings(config, **flags)

    async def go() -> None:
        conn = await connect(settings.dsn)
        try:
            if print_sql:
                state = await migrations.status(conn)
                if state.unknown:
                    raise SchemaError(state.problem() or "")
                click.echo(migrations.render_sql(state.pending), nl=False)
                return
            applied = await migrations.apply(conn)
        finally:
            await conn.close()
        if applied:
            for m in applied:
                click.echo(f"applied {m.label}")
        else:
            click.echo("schema is current; nothing to apply")

    _run(go)


@main.command()
@db_options
@click.option("--app", help="MODULE:ATTR of your Registry, to check its handlers against the queue.")
def check(config: str | None, **flags: Any) -> None:
    """Check the connection, the schema, LISTEN and handlers. Exit 0 when all is well."""
    from notifyq.checks import run_checks

    settings = _settings(config, **flags)
    ok = _run(lambda: run_checks(settings, click.echo))
    sys.exit(0 if ok else EXIT_CHECK)


@main.command()
@db_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def status(config: str | None, as_json: bool, **flags: Any) -> None:
    """Queues (queued, scheduled, running, failed, oldest age) and live workers."""
    from notifyq import status as view

    settings = _settings(config, **flags)
    overview = _run(lambda: view.gather(settings))
    click.echo(view.to_json(overview) if as_json else view.render(overview))


@main.command()
@db_options
@click.argument("task")
@click.option("--payload", default="{}", show_default=True, help="JSON payload.")
@click.option("--queue", default="default", show_default=True)
@click.option("--run-at", help="When to run: ISO 8601 time, or +SECONDS / +5m / +2h from now.")
@click.option("--priority", type=int, default=0, show_default=True, help="Higher runs first.")
@click.option("--dedup-key", help="Skip if a queued or running job holds this key.")
@click.option("--max-attempts", type=int, help="Attempts before failed (default 20).")
def enqueue(
    config: str | None,
    task: str,
    payload: str,
    queue: str,
    run_at: str | None,
    priority: int,
    dedup_key: str | None,
    max_attempts: int | None,
    **flags: Any,
) -> None:
    """Enqueue one job and print its id."""
    from notifyq.client import enqueue as enqueue_job
    from notifyq.store import connect, map_error

    settings = _settings(config, **flags)
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        _fail(f"--payload is not valid JSON: {exc}", EXIT_USAGE)
    _check_range("--priority", priority, PRIORITY_RANGE)
    _check_range("--max-attempts", max_attempts, MAX_ATTEMPTS_RANGE)
    when = _parse_when(run_at)

    async def go() -> int:
        conn = await connect(settings.dsn)
        try:
            return await enqueue_job(
                conn,
                task,
                body,
                queue=queue,
                run_at=when,
                priority=priority,
                dedup_key=dedup_key,
                max_attempts=max_attempts,
            )
        except ValueError as exc:  # refused by the client before anything is sent
            raise ConfigError(str(exc).splitlines()[0]) from None
        except Exception as exc:
            if isinstance(map_error(exc), QueryError):  # refused by the producer contract: a usage error
                raise ConfigError(str(exc).splitlines()[0]) from None
            raise
        finally:
            await conn.close()

    click.echo(_run(go))


@main.group()
def jobs() -> None:
    """Inspect and steer single jobs: list, show, retry, cancel."""


@jobs.command("list")
@db_options
@click.option("--state", type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]))
@click.option("--queue")
@click.option("--task")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def jobs_list(
    config: str | None,
    state: str | None,
    queue: str | None,
    task: str | None,
    limit: int,
    as_json: bool,
    **flags: Any,
) -> None:
    """The newest jobs, optionally filtered."""
    from notifyq.status import job_rows

    settings = _settings(config, **flags)
    click.echo(_run(lambda: job_rows(settings, state, queue, task, limit, as_json)))


@jobs.command("show")
@db_options
@click.argument("job_id", type=int)
def jobs_show(config: str | None, job_id: int, **flags: Any) -> None:
    """Every field of one job, as JSON (payload included: it is your data)."""
    from notifyq.status import job_detail

    settings = _settings(config, **flags)
    shown = _run(lambda: job_detail(settings, job_id))
    if shown is None:
        _fail(f"no job {job_id}", EXIT_RUNTIME)
    click.echo(shown)


@jobs.command("retry")
@db_options
@click.argument("job_id", type=int)
def jobs_retry(config: str | None, job_id: int, **flags: Any) -> None:
    """Put a failed or cancelled job back in the queue with fresh attempts."""
    _steer(config, job_id, "retry", "queued", flags)


@jobs.command("cancel")
@db_options
@click.argument("job_id", type=int)
def jobs_cancel(config: str | None, job_id: int, **flags: Any) -> None:
    """Cancel a job that has not started yet."""
    _steer(config, job_id, "cancel", "cancelled", flags)


def _steer(config: str | None, job_id: int, action: str, wanted: str, flags: dict[str, Any]) -> None:
    import asyncpg

    from notifyq import client
    from notifyq.store import connect

    settings = _settings(config, **flags)

    async def go() -> str | None:
        conn = await connect(settings.dsn)
        try:
            step = client.retry if action == "retry" else client.cancel
            return await step(conn, job_id)
        except asyncpg.exceptions.UniqueViolationError:
            # Only a retry makes a job queued again, and only the dedup index can refuse that.
            raise NotifyqError(
                f"job {job_id} cannot be retried: another queued or running job holds its dedup_key"
            ) from None
        finally:
            await conn.close()

    state = _run(go)
    if state is None:
        _fail(f"no job {job_id}", EXIT_RUNTIME)
    if state != wanted:
        _fail(f"job {job_id} is {state}; cannot {action} it", EXIT_RUNTIME)
    click.echo(f"job {job_id} {state}")


@main.group()
def schedules() -> None:
    """Periodic jobs: list, show, enable, disable, trigger, prune."""


@schedules.command("list")
@db_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def schedules_list(config: str | None, as_json: bool, **flags: Any) -> None:
    """Every schedule, with its last and next tick and how its latest run went."""
    from notifyq import periodic

    settings = _settings(config, **flags)
    click.echo(_run(lambda: periodic.listing(settings, as_json)))


@schedules.command("show")
@db_options
@click.argument("name")
def schedules_show(config: str | None, name: str, **flags: Any) -> None:
    """Every field of one schedule, as JSON."""
    from notifyq import periodic

    settings = _settings(config, **flags)
    shown = _run(lambda: periodic.detail(settings, name))
    if shown is None:
        _fail(f"no schedule {name!r}", EXIT_RUNTIME)
    click.echo(shown)


@schedules.command("enable")
@db_options
@click.argument("name")
def schedules_enable(config: str | None, name: str, **flags: Any) -> None:
    """Enable a schedule; the ticks missed while it was disabled do not run."""
    _toggle(config, name, True, flags)


@schedules.command("disable")
@db_options
@click.argument("name")
def schedules_disable(config: str | None, name: str, **flags: Any) -> None:
    """Disable a schedule (a daemon restart does not enable it again)."""
    _toggle(config, name, False, flags)


def _toggle(config: str | None, name: str, enabled: bool, flags: dict[str, Any]) -> None:
    from notifyq import periodic

    settings = _settings(config, **flags)
    if not _run(lambda: periodic.set_enabled(settings, name, enabled)):
        _fail(f"no schedule {name!r}", EXIT_RUNTIME)
    click.echo(f"schedule {name!r} {'enabled' if enabled else 'disabled'}")


@schedules.command("trigger")
@db_options
@click.argument("name")
def schedules_trigger(config: str | None, name: str, **flags: Any) -> None:
    """Make one job from a schedule now, outside its ticks."""
    from notifyq import periodic

    settings = _settings(config, **flags)
    job_id = _run(lambda: periodic.trigger(settings, name))
    if job_id is None:
        _fail(f"no schedule {name!r}", EXIT_RUNTIME)
    click.echo(f"job {job_id} enqueued from schedule {name!r}")


@schedules.command("prune")
@db_options
def schedules_prune(config: str | None, **flags: Any) -> None:
    """Remove the code schedules that no live daemon declares any more (SQL schedules stay)."""
    from notifyq import periodic

    settings = _settings(config, **flags)
    removed, alive = _run(lambda: periodic.prune(settings))
    if not alive:
        _fail("no live daemon: every code schedule would look stale; start the daemons first", EXIT_RUNTIME)
    click.echo("\n".join(f"removed {name!r}" for name in removed) or "nothing to prune")


@main.group()
def endpoints() -> None:
    """Callback endpoints: list them, enable one that a 410 Gone disabled."""


@endpoints.command("list")
@db_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def endpoints_list(config: str | None, as_json: bool, **flags: Any) -> None:
    """The configured endpoints (never their secrets) and which a 410 disabled."""
    from notifyq.callbacks import cli as callbacks_cli

    settings = _settings(config, **flags)
    click.echo(_run(lambda: callbacks_cli.listing(settings, as_json)))


@endpoints.command("enable")
@db_options
@click.argument("name")
def endpoints_enable(config: str | None, name: str, **flags: Any) -> None:
    """Call an endpoint again after a 410 Gone disabled it."""
    from notifyq.callbacks import cli as callbacks_cli

    settings = _settings(config, **flags)
    if not _run(lambda: callbacks_cli.enable(settings, name)):
        _fail(f"endpoint {name!r} is not disabled", EXIT_RUNTIME)
    click.echo(f"endpoint {name!r} enabled")


@main.group()
def tokens() -> None:
    """Bearer tokens for the HTTP API (api_address): create, list, revoke."""


@tokens.command("create")
@db_options
@click.argument("name")
@click.option("--queues", required=True, help="Comma list of the queues it reaches, or * for all.")
@click.option("--write", "can_write", is_flag=True, help="Let it enqueue, cancel, retry and edit schedules.")
def tokens_create(config: str | None, name: str, queues: str, can_write: bool, **flags: Any) -> None:
    """Make a token (or renew a revoked one's name); it is printed once, and only its hash is kept."""
    from notifyq.api import admin

    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    wrong = admin.check(name, wanted)
    if wrong is not None:
        _fail(wrong, EXIT_USAGE)
    settings = _settings(config, **flags)
    token = _run(lambda: admin.create(settings, name, wanted, can_write))
    if token is None:
        _fail(f"a token named {name!r} is active (revoke it first to renew it under that name)", EXIT_RUNTIME)
    click.echo(token)
    click.echo(f"token {name!r} made; it is shown only now: keep it in a secret store", err=True)


@tokens.command("list")
@db_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def tokens_list(config: str | None, as_json: bool, **flags: Any) -> None:
    """Every token's name, queues and scope (never the token)."""
    from notifyq.api import admin

    settings = _settings(config, **flags)
    click.echo(_run(lambda: admin.listing(settings, as_json)))


@tokens.command("revoke")
@db_options
@click.argument("name")
def tokens_revoke(config: str | None, name: str, **flags: Any) -> None:
    """Revoke a token: requests with it are refused within 5 s."""
    from notifyq.api import admin

    settings = _settings(config, **flags)
    if not _run(lambda: admin.revoke(settings, name)):
        _fail(f"no active token {name!r}", EXIT_RUNTIME)
    click.echo(f"token {name!r} revoked")


def _check_range(flag: str, value: int | None, limits: tuple[int, int]) -> None:
    if value is not None and not limits[0] <= value <= limits[1]:
        _fail(f"{flag}: must be between {limits[0]} and {limits[1]} (got {value})", EXIT_USAGE)


def _parse_when(text: str | None) -> datetime | timedelta | None:
    if text is None:
        return None
    if text.startswith("+"):
        units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
        number, unit = (text[1:-1], text[-1]) if text[-1] in units else (text[1:], "s")
        try:
            seconds = float(number) * units[unit]
            if not math.isfinite(seconds):
                raise ValueError("not finite")
            return timedelta(seconds=seconds)
        except ValueError:
            _fail(f"--run-at {text!r}: expected +SECONDS, +Nm, +Nh or +Nd", EXIT_USAGE)
        except OverflowError:  # beyond timedelta's 999,999,999 days
            _fail(f"--run-at {text!r}: too far in the future", EXIT_USAGE)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        _fail(f"--run-at {text!r}: expected an ISO 8601 time or +SECONDS", EXIT_USAGE)
        raise
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@main.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="Where the private cluster lives (default: a folder under the temp dir).",
)
@click.option("--port", type=int, default=0, help="Port for the private Postgres (default: free).")
@click.option("--app", default="examples.hello:registry", show_default=True)
@click.option(
    "--jobs",
    "demo_jobs",
    type=int,
    default=30,
    show_default=True,
    help="Demo jobs to enqueue at start.",
)
@click.option("--log-format", type=click.Choice(["json", "console", "auto"]), default="auto")
def dev(data_dir: str | None, port: int, app: str, demo_jobs: int, log_format: str) -> None:
    """Try notifyq with no database to set up: a private Postgres, the example app, demo jobs.

    Ctrl-C stops the daemon and the private Postgres.
    """
    from notifyq.devserver import run_dev

    logs.configure(log_format, "debug")  # a newcomer wants to see every job start and finish
    try:
        run_dev(data_dir=data_dir, port=port, app=app, demo_jobs=demo_jobs, echo=click.echo)
    except NotifyqError as exc:
        _fail(str(exc), EXIT_RUNTIME)
