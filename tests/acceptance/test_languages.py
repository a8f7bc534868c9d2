"""Producers in other languages, as the README shows them: psql, Node (pg), synchronous Python
(psycopg 3) and curl (the HTTP API). Each enqueues a callback; a daemon with no app of its own calls the
example receiver (examples/receiver/receiver.py, a real process), which checks the signature with the
Standard Webhooks library and prints the job it got."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio
import pytest

from notifyq.daemon import Daemon
from notifyq.devserver import free_port
from notifyq.registry import Registry
from tests.support import ROOT, cli, running_daemon, wait_for

pytestmark = pytest.mark.timeout(120)

SECRET = "whsec_" + base64.b64encode(b"L" * 32).decode()
EXAMPLES = ROOT / "examples"



class ReceiverProcess:
    """examples/receiver/receiver.py on a free port; the lines it prints, as they come."""

    def __init__(self) -> None:
        self.port = free_port()
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "receiver" / "receiver.py"), str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "CALLBACK_SECRET": SECRET},
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/order"

    def got(self, job_id: str) -> bool:
        return any(line.startswith(f"job {job_id}:") for line in self.lines)


@pytest.fixture
def receiver() -> Iterator[ReceiverProcess]:
    r = ReceiverProcess()
    try:
        yield r
    finally:
        r.proc.terminate()
        r.proc.wait(10)


async def run(args: list[str], cwd: Path = ROOT, **env: str) -> str:
    """A producer's process, awaited: the daemon (and its API) runs in this event loop meanwhile."""
    with anyio.fail_after(90):
        done = await anyio.run_process(args, cwd=cwd, env={**os.environ, **env}, check=False)
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, (args, out, err)
    return out


def job_id(output: str) -> str:
    """The job id a producer printed (`enqueued job N`, psql's table, or the API's JSON)."""
    found = re.findall(r"\d+", output.split("job_id")[-1] if "job_id" in output else output)
    assert found, output
    return found[0]


def serve(db_dsn: str) -> AbstractAsyncContextManager[Daemon]:
    return running_daemon(
        db_dsn,
        Registry(),
        callback_allow=("127.0.0.1",),
        callback_secret=(SECRET,),
        api_address="127.0.0.1:0",
    )


async def test_psql(db_dsn: str, receiver: ReceiverProcess) -> None:
    async with serve(db_dsn):
        out = await run(["psql", db_dsn, "-v", "ON_ERROR_STOP=1", "-v", f"url={receiver.url}",
                   "-f", str(EXAMPLES / "psql" / "enqueue.sql")])  # fmt: skip
        await wait_for(lambda: receiver.got(job_id(out)), 20, "the callback from a psql job")


async def test_node(db_dsn: str, receiver: ReceiverProcess) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "node and npm are needed (the README's test command installs the rest)"
    folder = EXAMPLES / "node"
    if not (folder / "node_modules" / "pg").is_dir():
        await run([npm, "ci", "--no-audit", "--no-fund"], cwd=folder)
    async with serve(db_dsn):
        out = await run([node, "enqueue.js"], cwd=folder, DATABASE_URL=db_dsn, CALLBACK_URL=receiver.url)
        await wait_for(lambda: receiver.got(job_id(out)), 20, "the callback from a Node job")


async def test_python_sync(db_dsn: str, receiver: ReceiverProcess) -> None:
    async with serve(db_dsn):
        out = await run([sys.executable, str(EXAMPLES / "python-sync" / "enqueue.py")],
                  DATABASE_URL=db_dsn, CALLBACK_URL=receiver.url)  # fmt: skip
        await wait_for(lambda: receiver.got(job_id(out)), 20, "the callback from a psycopg job")


async def test_curl(db_dsn: str, receiver: ReceiverProcess) -> None:
    made = cli("tokens", "create", "curl-example", "--queues", "default", "--write", "--dsn", db_dsn)
    assert made.returncode == 0, made.stderr
    async with serve(db_dsn) as daemon:
        assert daemon.api is not None
        out = await run(["sh", str(EXAMPLES / "curl" / "enqueue.sh")], NOTIFYQ_API=f"http://127.0.0.1:{daemon.api.port}",
                  NOTIFYQ_TOKEN=made.stdout.strip(), CALLBACK_URL=receiver.url)  # fmt: skip
        await wait_for(lambda: receiver.got(job_id(out)), 20, "the callback from a curl job")
