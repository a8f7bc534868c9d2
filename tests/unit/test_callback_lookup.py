"""Name lookups in threads of their own: a slow name holds its own thread only, for as long as its
caller waits; past the cap, lookups fail at once instead of queueing behind slow ones."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import anyio
import pytest

from notifyq.callbacks.lookup import LookupBusy, Resolver
from tests.support import wait_for

pytestmark = pytest.mark.timeout(20)


class SlowDns:
    """getaddrinfo whose names under `slow.` hang until released; any other name answers at once."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def __call__(self, host: str, port: int | None, **kwargs: Any) -> list[tuple[Any, ...]]:
        if host.startswith("slow."):
            self.release.wait(15)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("203.0.113.7", port or 0))] * 2


async def test_slow_names_hold_their_own_threads_and_the_cap_refuses_at_once() -> None:
    dns = SlowDns()
    resolver = Resolver(3, dns)
    try:
        for n in range(3):
            with pytest.raises(TimeoutError):
                await resolver.addresses(f"slow.{n}", 443, 0.05)
        assert resolver.running == 3, "a lookup given up on still holds its thread"
        began = time.monotonic()
        with pytest.raises(LookupBusy, match="3 name lookups are already under way"):
            await resolver.addresses("fine.example", 443, 5)
        assert time.monotonic() - began < 0.5, "refused at once, not queued"
    finally:
        dns.release.set()
    await wait_for(lambda: resolver.running == 0, 10, "the released lookups to end")  # state in threads
    assert await resolver.addresses("fine.example", 443, 5) == ["203.0.113.7"]


async def test_a_healthy_name_is_answered_beside_slow_ones_under_the_cap() -> None:
    dns = SlowDns()
    resolver = Resolver(8, dns)
    try:
        async with anyio.create_task_group() as tg:
            for n in range(5):
                tg.start_soon(_expect_timeout, resolver, f"slow.{n}")
            await wait_for(lambda: resolver.running == 5, 10, "five slow lookups under way")
            began = time.monotonic()
            assert await resolver.addresses("fine.example", None, 5) == ["203.0.113.7"]
            assert time.monotonic() - began < 0.5
    finally:
        dns.release.set()


async def test_a_failed_lookup_raises_its_own_error() -> None:
    dns = SlowDns()
    dns.release.set()
    with pytest.raises(socket.gaierror):
        await Resolver(2, dns).addresses("slow.x", 80, 5)


async def _expect_timeout(resolver: Resolver, host: str) -> None:
    with pytest.raises(TimeoutError):
        await resolver.addresses(host, 443, 1.0)


async def test_a_thread_that_cannot_start_leaks_no_count(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    resolver = Resolver(2, SlowDns())
    monkeypatch.setattr(threading.Thread, "start", no_thread)
    for _ in range(3):
        with pytest.raises(RuntimeError):
            await resolver.addresses("fine.example", 443, 5)
    assert resolver.running == 0


async def test_what_a_lookup_raises_beyond_exceptions_reaches_its_caller_as_an_oserror() -> None:
    def odd(host: str, port: int | None, **kwargs: Any) -> list[tuple[Any, ...]]:
        raise StopIteration  # a future cannot hold it

    with pytest.raises(OSError, match="raised StopIteration"):
        await Resolver(2, odd).addresses("x.example", 80, 5)
