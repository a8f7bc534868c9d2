"""Fixtures for the fault suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from notifyq import migrate
from notifyq.devserver import PrivateCluster, free_port
from tests.faults import checker


@pytest.fixture
async def cluster(pg_tmp: Path) -> AsyncIterator[PrivateCluster]:
    """A throwaway Postgres of this test's own, migrated, with the checker's audit installed: for
    scenarios that stop or break the server (never the shared one)."""
    c = PrivateCluster(pg_tmp / "pg", free_port())
    c.init()
    c.start()
    conn = await asyncpg.connect(c.dsn)
    try:
        await migrate.apply(conn)
        await checker.install(conn)
    finally:
        await conn.close()
    yield c
    c.stop("immediate")
