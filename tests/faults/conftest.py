"""Fixtures for the fault suite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from notifyq import migrate
from notifyq.devserver import PrivateCluster
from tests.faults import checker
from tests.support import DaemonProcess, private_cluster


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Daemon processes a test starts (tests.support.spawn); each is closed (killed if still running)
    when the test ends, whatever its outcome."""
    started: list[DaemonProcess] = []
    yield started
    for d in started:
        d.close()


@pytest.fixture
async def cluster(pg_tmp: Path) -> AsyncIterator[PrivateCluster]:
    """A throwaway Postgres of this test's own, migrated, with the checker's audit installed: for
    scenarios that stop or break the server (never the shared one). Stopped on every path, also when
    the start, the migration or the audit install fails."""
    with private_cluster(pg_tmp / "pg") as c:
        conn = await asyncpg.connect(c.dsn)
        try:
            await migrate.apply(conn)
            await checker.install(conn)
        finally:
            await conn.close()
        yield c
