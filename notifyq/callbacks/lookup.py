"""Name lookups for callbacks and the API's enqueue check: each in a thread of its own, bounded in time
and in number.

`getaddrinfo` blocks, so asyncio runs it in an executor (under uvloop, libuv's four threads). There a
few names whose DNS server stalls held every thread for as long as the resolver's own timeout, and every
other lookup, the API's included, waited behind them: one producer's slow names made other callbacks
time out. The executor's threads are also waited for at exit, so a daemon told to stop lived on until
they ended. Here each lookup runs in a daemon thread, its caller stops waiting at its deadline, and at
most `max_threads` lookups are under way at once (a thread given up on still counts until its lookup
returns): slow names cost the others nothing up to that cap, and past it a lookup fails at once, saying
so, instead of queueing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Any

import anyio

GetAddrInfo = Callable[..., list[tuple[Any, ...]]]


class LookupBusy(OSError):
    """Too many lookups are under way (some name's DNS server is slow); try again later."""


class Resolver:
    """Resolves host names to addresses, at most `max_threads` at once."""

    def __init__(self, max_threads: int, getaddrinfo: GetAddrInfo = socket.getaddrinfo) -> None:
        self.max_threads = max_threads
        self._getaddrinfo = getaddrinfo
        self._running = 0
        self._lock = threading.Lock()

    @property
    def running(self) -> int:
        """Lookups under way, those given up on included."""
        return self._running

    async def addresses(self, host: str, port: int | None, seconds: float) -> list[str]:
        """Every address `host` resolves to, in the resolver's order, without repeats. Raises an OSError
        (the lookup failed; LookupBusy) or TimeoutError (no answer within `seconds`)."""
        with self._lock:
            if self._running >= self.max_threads:
                raise LookupBusy(f"{self._running} name lookups are already under way (a slow DNS server?)")
            self._running += 1
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[list[tuple[Any, ...]]] = loop.create_future()

        def settle(infos: list[tuple[Any, ...]] | None, error: BaseException | None) -> None:
            if answer.done():  # given up on at its deadline
                return
            if error is not None:
                answer.set_exception(error)
            else:
                answer.set_result(infos or [])

        def look_up() -> None:
            infos: list[tuple[Any, ...]] | None = None
            error: BaseException | None = None
            try:
                infos = self._getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except BaseException as exc:  # handed to the waiting task, which raises it
                # A future cannot hold StopIteration, and what is not an Exception must not end the
                # loop: both become an OSError saying what the lookup raised.
                plain = isinstance(exc, Exception) and not isinstance(exc, StopIteration)
                error = exc if plain else OSError(f"the lookup of {host} raised {exc!r}")
            finally:
                with self._lock:
                    self._running -= 1
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle, infos, error)

        try:
            threading.Thread(target=look_up, name="notifyq-lookup", daemon=True).start()
        except BaseException:  # no thread (the process's limit): this lookup never ran
            with self._lock:
                self._running -= 1
            raise
        with anyio.fail_after(seconds):
            infos = await answer
        return list(dict.fromkeys(str(info[4][0]) for info in infos))
