"""Task name -> handler and its options.

A Registry is built at import time of the user's module (decorators only record; nothing starts).
The daemon claims only the tasks its registry knows, so a job with no handler stays queued.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from notifyq.errors import AppLoadError
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


_TASK_NAME = re.compile(r"^[^\x00-\x1f]{1,200}$")


class Registry:
    """Maps task names to handlers: `@registry.task("emails.send", max_attempts=5, timeout=30)`."""

    def __init__(self, *, backoff: Backoff | None = None) -> None:
        self._tasks: dict[str, TaskSpec] = {}
        self._backoff = backoff or Backoff()

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
        if max_attempts is not None and not 1 <= max_attempts <= 1000:
            raise ValueError(f"max_attempts must be between 1 and 1000, got {max_attempts}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")

        def register(fn: H) -> H:
            if name in self._tasks:
                raise ValueError(f"task {name!r} is registered twice")
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
        raise AppLoadError(f"invalid setting app: cannot import {module_name!r}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise AppLoadError(f"invalid setting app: {module_name!r} has no attribute {attr!r}")
    if not isinstance(target, Registry):
        raise AppLoadError(
            f"invalid setting app: {spec!r} is a {type(target).__name__}, not a notifyq.Registry"
        )
    return target
