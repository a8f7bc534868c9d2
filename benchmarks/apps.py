"""Handlers the benchmarks run: a no-op, and one that reports its start time over UDP."""

from __future__ import annotations

import os
import socket
import time

import anyio

from notifyq import Job, Registry

registry = Registry()
_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


@registry.task("bench.noop")
async def noop(job: Job) -> None:
    """Nothing: the benchmark measures notifyq, not the handler."""


@registry.task("bench.block")
async def block(job: Job) -> None:
    """Holds its slot until the daemon stops: keeps a daemon busy."""
    await anyio.sleep_forever()


@registry.task("bench.wake")
async def wake(job: Job) -> None:
    """First line: take the time (CLOCK_MONOTONIC is one clock for every process on the machine)."""
    now = time.monotonic()
    _sock.sendto(f"{job.id} {now!r}".encode(), ("127.0.0.1", int(os.environ["BENCH_UDP_PORT"])))


@registry.task("bench.stamp")
async def stamp(job: Job) -> None:
    """First line: send how long ago the producer took its time before the INSERT."""
    waited = time.monotonic() - job.payload["t"]
    _sock.sendto(repr(waited).encode(), ("127.0.0.1", int(os.environ["BENCH_UDP_PORT"])))


@registry.task("bench.stamp_wall")
async def stamp_wall(job: Job) -> None:
    """First line: how long ago the row's clock_timestamp() was taken (the wall clock, same machine)."""
    waited = time.time() - job.payload["w"]
    _sock.sendto(repr(waited).encode(), ("127.0.0.1", int(os.environ["BENCH_UDP_PORT"])))
