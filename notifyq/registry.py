"""Task name -> handler and its options.

A Registry is built at import time of the user's module (decorators only record; nothing starts).
The daemon claims only the tasks its registry knows, so a job with no handler stays queued.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import re
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import orjson

from notifyq import cron
from notifyq.client import _dumps
from notifyq.config import QUEUE_PATTERN
from notifyq.errors import AppLoadError
from notifyq.models import PeriodicSpec
from notifyq.retry import Backoff

Handler = Callable[..., Any] | Callable[..., Awaitable[Any]]  # (job) or (job, ctx); see context.py
H = TypeVar("H", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class TaskSpec:
    name: str
    handler: Handler
    is_async: bool
    takes_context: bool  # called as handler(job, ctx) rather than handler(job)
    timeout: float | None
    max_attempts: int | None
    backoff: Backoff


# "\u0000" in JSON text, not preceded by an escaping backslash: a NUL, which jsonb refuses.
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_TASK_NAME = re.compile(r"^[^\x00-\x1f]{1,200}$")
_SCHEDULE_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")
MAX_BACKFILL = timedelta(days=366)  # the schedules table's own limit (migration 0007)
# The longest timeout or backoff delay accepted: a year is already a mistake, and far larger numbers
# overflow the SQL interval of a retry's run_at or the event loop's deadline, long after start-up.
MAX_SECONDS = 365 * 86400.0
# The steepest backoff growth accepted: factor ** 64 (where the floor stops growing) must stay a float.
MAX_BACKOFF_FACTOR = 100.0


class Registry:
    """Maps task names to handlers: `@registry.task("emails.send", max_attempts=5, timeout=30)`."""

    def __init__(self, *, backoff: Backoff | None = None) -> None:
        self._tasks: dict[str, TaskSpec] = {}
        # Schedules declared on a handler wait for its task name, known once @task has seen it too
        # (the two decorators may come in either order).
        self._periodic: list[tuple[PeriodicSpec, Callable[..., Any] | None]] = []
        self._backoff = _check_backoff(backoff or Backoff(), "Registry")

    def task(
        self,
        name: str,
        *,
        max_attempts: int | None = None,
        timeout: float | None = None,
        backoff: Backoff | None = None,
    ) -> Callable[[H], H]:
        """Register the decorated function (async, or sync to run in a thread) as the handler of `name`."""
        if not _TASK_NAME.match(name):
            raise ValueError(f"task name must be 1 to 200 printable characters, got {name!r}")
        # Checked here, at import of the app, so that `serve` refuses them at start: the range tests
        # are written so that NaN fails them (every comparison with NaN is false) and so is infinity.
        if max_attempts is not None and not (_is_int(max_attempts) and 1 <= max_attempts <= 1000):
            raise ValueError(
                f"task {name!r}: max_attempts must be an int from 1 to 1000, got {max_attempts!r}"
            )
        if timeout is not None and not (_is_number(timeout) and 0 < timeout <= MAX_SECONDS):
            raise ValueError(
                f"task {name!r}: timeout must be a number of seconds above 0 and at most {MAX_SECONDS:.15g},"
                f" got {timeout!r}"
            )
        if backoff is not None:
            _check_backoff(backoff, f"task {name!r}")

        def register(fn: H) -> H:
            if name in self._tasks:
                raise ValueError(f"task {name!r} is registered twice")
            if _is_generator(fn):
                # Calling it returns a generator without running a line of its body, and that was
                # recorded as a success.
                raise ValueError(
                    f"handler of task {name!r} is a generator function (it contains yield): calling it"
                    " runs none of its body; return the result instead"
                )
            self._tasks[name] = TaskSpec(
                name=name,
                handler=fn,
                is_async=_is_async(fn),
                takes_context=_takes_context(fn, name),
                timeout=timeout,
                max_attempts=max_attempts,
                backoff=backoff or self._backoff,
            )
            return fn

        return register

    def periodic(
        self,
        cron_expression: str,
        *,
        name: str,
        task: str | None = None,
        tz: str = "UTC",
        payload: Any = None,
        queue: str = "default",
        priority: int = 0,
        max_attempts: int | None = None,
        backfill: timedelta | None = None,
        skip_overlap: bool = False,
    ) -> Callable[[H], H]:
        """A schedule, kept in `notifyq.schedules` under `name` and upserted by the daemon at start.

        On a handler (above or below its `@registry.task`) it makes jobs of that task; with `task=` it is
        a schedule for any task, handled here or not (call it as a statement: `registry.periodic(...,
        task="reports.build")`). `cron_expression` is read in `tz`; see notifyq/cron.py for the syntax."""
        where = f"periodic {name!r}"
        if not isinstance(name, str) or not _SCHEDULE_NAME.match(name):
            raise ValueError(f"periodic name must be 1 to 200 printable characters, got {name!r}")
        if any(p.name == name for p, _ in self._periodic):
            raise ValueError(f"{where} is declared twice")
        if not isinstance(cron_expression, str) or not isinstance(tz, str):
            raise ValueError(f"{where}: the cron expression and tz must be strings")
        try:
            cron.parse(cron_expression, tz)
        except cron.CronError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if task is not None and not (isinstance(task, str) and _TASK_NAME.match(task)):
            raise ValueError(f"{where}: task must be 1 to 200 printable characters, got {task!r}")
        if not isinstance(queue, str) or not QUEUE_PATTERN.match(queue):
            raise ValueError(f"{where}: queue must match {QUEUE_PATTERN.pattern}, got {queue!r}")
        if not (_is_int(priority) and -1000 <= priority <= 1000):
            raise ValueError(f"{where}: priority must be an int from -1000 to 1000, got {priority!r}")
        if max_attempts is not None and not (_is_int(max_attempts) and 1 <= max_attempts <= 1000):
            raise ValueError(f"{where}: max_attempts must be an int from 1 to 1000, got {max_attempts!r}")
        backfill = timedelta(0) if backfill is None else backfill
        if not isinstance(backfill, timedelta) or not timedelta(0) <= backfill <= MAX_BACKFILL:
            raise ValueError(f"{where}: backfill must be a timedelta from 0 to 366 days, got {backfill!r}")
        if not isinstance(skip_overlap, bool):
            raise ValueError(f"{where}: skip_overlap must be True or False, got {skip_overlap!r}")
        try:
            payload_json = _dumps(payload, f"{where}: payload")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: payload: {exc}") from None
        # Measured as the schedules guard measures it, as jsonb's text (a space after each comma and
        # colon), not as compact JSON: 400,000 list items passed here and were refused there.
        as_jsonb = json.dumps(orjson.loads(payload_json), ensure_ascii=False)
        if len(as_jsonb.encode()) > 1048576:
            raise ValueError(f"{where}: payload must be at most 1048576 bytes of JSON as Postgres writes it")
        if _JSON_NUL.search(payload_json):
            raise ValueError(f"{where}: payload holds a NUL character, which Postgres's jsonb cannot store")
        spec = PeriodicSpec(
            name=name,
            cron=cron_expression,
            timezone=tz,
            task=task or "",
            payload_json=payload_json,
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            backfill=backfill,
            skip_overlap=skip_overlap,
        )
        if task is not None:
            self._periodic.append((spec, None))
            return lambda fn: fn

        def declare(fn: H) -> H:
            self._periodic.append((spec, fn))
            return fn

        return declare

    @property
    def schedules(self) -> list[PeriodicSpec]:
        """The schedules declared here, each with its task; a ValueError names one whose handler was
        never registered as a task."""
        out = []
        for spec, fn in self._periodic:
            if fn is None:
                out.append(spec)
                continue
            names = [t.name for t in self._tasks.values() if t.handler is fn]
            if len(names) != 1:
                raise ValueError(
                    f"periodic {spec.name!r}: its function is the handler of "
                    f"{'no task' if not names else f'{len(names)} tasks'}; decorate it with"
                    " @registry.task as well, or pass task="
                )
            out.append(dataclasses.replace(spec, task=names[0]))
        return out

    def get(self, name: str) -> TaskSpec | None:
        return self._tasks.get(name)

    def __getitem__(self, name: str) -> TaskSpec:
        return self._tasks[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[TaskSpec]:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def names(self) -> list[str]:
        return sorted(self._tasks)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_backoff(backoff: Backoff, owner: str) -> Backoff:
    """A Backoff whose every delay is a finite number of seconds within MAX_SECONDS."""
    if not isinstance(backoff, Backoff):
        raise ValueError(f"{owner}: backoff must be a notifyq.Backoff, got {type(backoff).__name__}")
    fields = {
        "base_seconds": (backoff.base_seconds, 0.0, MAX_SECONDS),
        "cap_seconds": (backoff.cap_seconds, 0.0, MAX_SECONDS),
        "factor": (backoff.factor, 1.0, MAX_BACKOFF_FACTOR),
        "jitter": (backoff.jitter, 0.0, 1.0),
    }
    for field, (value, low, high) in fields.items():
        if not (_is_number(value) and low <= value <= high):
            raise ValueError(
                f"{owner}: backoff {field} must be a number from {low:.15g} to {high:.15g}, got {value!r}"
            )
    return backoff


def _is_generator(fn: Any) -> bool:
    """Generator functions, sync or async, and callable objects whose __call__ is one."""
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - we want the method, not callable()
    return any(inspect.isgeneratorfunction(f) or inspect.isasyncgenfunction(f) for f in (fn, call))


def _is_async(fn: Any) -> bool:
    """Coroutine functions, and callable objects whose __call__ is one."""
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - we want the method, not callable()
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


def _takes_context(fn: Any, name: str) -> bool:
    """True for handler(job, ctx), False for handler(job); more required arguments are refused."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return False  # a builtin or C callable: called with the job alone
    params = list(signature.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    if len(required) > 2 or (not positional and not varargs):
        raise ValueError(
            f"handler of task {name!r} must take (job) or (job, ctx), "
            f"not {len(required) if required else len(positional)} required arguments"
        )
    return len(required) == 2


def load_app(spec: str) -> Registry:
    """Import `MODULE:ATTR` and return the Registry there; the current folder is importable."""
    module_name, _, attr = spec.partition(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppLoadError(f"invalid setting app: cannot import {module_name!r}: {_first_line(exc)}") from exc
    except (Exception, SystemExit) as exc:  # the app's own code failed: a SyntaxError, a bad task option
        raise AppLoadError(
            f"invalid setting app: cannot import {module_name!r}: {type(exc).__name__}: {_first_line(exc)}"
        ) from exc
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise AppLoadError(f"invalid setting app: {module_name!r} has no attribute {attr!r}")
    if not isinstance(target, Registry):
        raise AppLoadError(
            f"invalid setting app: {spec!r} is a {type(target).__name__}, not a notifyq.Registry"
        )
    if len(target) == 0:
        raise AppLoadError(f"invalid setting app: {spec!r} has no tasks; register at least one handler")
    try:
        target.schedules  # noqa: B018 - resolved now, so that a stray @periodic fails at start
    except ValueError as exc:
        raise AppLoadError(f"invalid setting app: {exc}") from None
    return target


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""
