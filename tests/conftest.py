"""Fixtures: every test that touches the database gets its own database, cloned from a template that
has the migrations applied once per session (CREATE DATABASE ... TEMPLATE is a file copy, far cheaper
than migrating each time). NOTIFY is delivered only on commit, so tests commit for real."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from notifyq import migrate
from tests.support import ADMIN_DSN, ScratchRoles, dsn_for

_counter = itertools.count()
_PREFIX = f"nq_test_{os.getpid()}"
TEMPLATE = f"{_PREFIX}_tpl"


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    import anyio

    async def build() -> None:
        await _admin(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        await _admin(f"CREATE DATABASE {TEMPLATE}")
        conn = await asyncpg.connect(dsn_for(TEMPLATE))
        try:
            await migrate.apply(conn)
        finally:
            await conn.close()

    try:
        anyio.run(build)
        yield TEMPLATE
    finally:
        # Also when the build failed half-way: the template must not outlive the session.
        anyio.run(_admin, f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")


@pytest.fixture
async def db_dsn(template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test."""
    name = f"{_PREFIX}_{next(_counter)}"
    await _admin(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    yield dsn_for(name)
    await _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def empty_dsn() -> AsyncIterator[str]:
    """A fresh database without the notifyq schema."""
    name = f"{_PREFIX}_{next(_counter)}"
    await _admin(f"CREATE DATABASE {name}")
    yield dsn_for(name)
    await _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def scratch_roles(empty_dsn: str) -> AsyncIterator[ScratchRoles]:
    """Role names of this test's own (see ScratchRoles), for use in `empty_dsn`; dropped afterwards, before
    the database itself (this fixture is set up after `empty_dsn`, so it is torn down first)."""
    roles = ScratchRoles(f"{_PREFIX}_r{next(_counter)}")
    yield roles
    admin = await asyncpg.connect(empty_dsn)
    try:
        await roles.drop(admin)
    finally:
        await admin.close()


@pytest.fixture
async def conn(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(db_dsn)
    yield c
    await c.close()


@pytest.fixture
def pg_tmp() -> Iterator[Path]:
    """A folder the `postgres` user can traverse (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="notifyq-test-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Start or install what the suite needs (tests/prerequisites.py), or stop with one line saying what
    is missing and how to get it."""
    from tests import prerequisites

    missing = prerequisites.ensure()
    if missing:
        pytest.exit(f"notifyq tests cannot run: {missing}", returncode=4)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="Run the fault scenarios at full length (minutes each) instead of the CI size.",
    )


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--soak"))
