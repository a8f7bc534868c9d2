"""The recorder app plus handlers that misbehave the way a hostile review found: bad values given to
Retry/Snooze/Discard, exceptions that cannot describe themselves, handlers that cancel their own task,
and a sync handler that cannot be interrupted. Run as `tests.apps.hostile:registry`."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
import warnings
from typing import Any

import anyio
import anyio.from_thread

from notifyq import Discard, Job, Retry, Snooze
from tests.apps.recorder import _end, _start, registry

__all__ = ["registry"]


class _StrRaises(Exception):
    """An exception whose __str__ raises `raised`."""

    def __init__(self, raised: type[BaseException]) -> None:
        super().__init__()
        self.raised = raised

    def __str__(self) -> str:
        raise self.raised("from __str__")


class _BadReason:
    def __str__(self) -> str:
        raise SystemExit("from a reason's __str__")


# Each is called with the job; whatever it raises or returns must end as that job's outcome.
_BAD: dict[str, Any] = {
    "snooze_string": lambda: Snooze("10"),  # type: ignore[arg-type]
    "snooze_huge": lambda: Snooze(10**400),
    "snooze_nan": lambda: Snooze(float("nan")),
    "retry_delay_string": lambda: Retry("x", delay="soon"),  # type: ignore[arg-type]
    "retry_delay_huge": lambda: Retry("x", delay=1e300),
    "retry_reason_unprintable": lambda: Retry(_BadReason()),  # type: ignore[arg-type]
    "discard_reason_unprintable": lambda: Discard(_BadReason()),  # type: ignore[arg-type]
    "str_raises_system_exit": lambda: _StrRaises(SystemExit),
    "str_raises_keyboard_interrupt": lambda: _StrRaises(KeyboardInterrupt),
    "str_raises_cancelled": lambda: _StrRaises(asyncio.CancelledError),
}


@registry.task("hostile.bad", max_attempts=1)
async def bad(job: Job) -> None:
    """payload {"how": one of _BAD}: raise what it makes (or what making it raised)."""
    raise _BAD[job.payload["how"]]()


@registry.task("hostile.cancel_self", max_attempts=1)
async def cancel_self(job: Job) -> str:
    """Cancels its own task, then returns: the runner must survive it."""
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    return "returned after cancelling itself"


@registry.task("hostile.exit", max_attempts=2)
async def exit_at_once(job: Job) -> None:
    """Ends its process before its first await, leaving the rest of its begin batch never run."""
    os._exit(3)


@registry.task("hostile.block_loop")
async def block_loop(job: Job) -> None:
    """On its first run only, blocks the event loop for `seconds` (CPU work that never awaits)."""
    if job.attempt == 1 and job.unclear_crashes == 0:
        time.sleep(float(job.payload.get("seconds", 0)))  # noqa: ASYNC251 -- the point


class _RaisesOnDelete:
    def __del__(self) -> None:
        raise RuntimeError("raised in __del__")


@registry.task("hostile.stray_errors")
async def stray_errors(job: Job) -> None:
    """Raises where no runner can catch it: in a thread of its own and in a __del__; then succeeds."""

    def boom() -> None:
        raise RuntimeError("raised in a handler's own thread")

    thread = threading.Thread(target=boom, name="handler-thread")
    thread.start()
    await anyio.to_thread.run_sync(thread.join)
    _RaisesOnDelete()
    gc.collect()
    warnings.warn("a library's warning", UserWarning, stacklevel=1)


@registry.task("hostile.sync_work")
def sync_work(job: Job) -> None:
    """Records its run (like rec.work) but sleeps in a thread: it cannot be cancelled."""
    anyio.from_thread.run(_start, job)
    try:
        time.sleep(float(job.payload.get("seconds", 0)))
    finally:
        anyio.from_thread.run(_end_shielded, job)


async def _end_shielded(job: Job) -> None:
    # Run in the loop on behalf of this thread's runner, whose scope may be cancelled by now (a lost
    # lease): the end of the run must be recorded all the same.
    with anyio.CancelScope(shield=True):
        await _end(job, returned=True)


@registry.task("hostile.loop_bomb", max_attempts=1)
async def loop_bomb(job: Job) -> None:
    """Raises SystemExit(0) from a loop callback, outside any job: it ends the event loop itself."""

    def bomb() -> None:
        raise SystemExit(0)

    asyncio.get_running_loop().call_soon(bomb)
    await asyncio.sleep(5)
