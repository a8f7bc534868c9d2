"""Security: least-privilege roles logged in for real, and passwords that never leak."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import anyio
import asyncpg
import pytest

from notifyq import NewJob, enqueue_many
from tests.apps.recorder import SCHEMA
from tests.support import (
    ADMIN_HOST,
    ADMIN_USER,
    ROOT,
    SHIPPED_ROLES,
    DaemonProcess,
    ScratchRoles,
    cli,
    wait_for,
    with_login,
)

pytestmark = pytest.mark.timeout(90)
WHO = ("owner", "producer", "worker", "observer")


async def test_each_role_logged_in_can_do_its_job_and_no_more(
    empty_dsn: str, scratch_roles: ScratchRoles, tmp_path: Path
) -> None:
    # The shipped role scripts with this test's own role names (roles are cluster-wide; see ScratchRoles),
    # and a login of this test's own in each role.
    roles = dict(zip(WHO, (scratch_roles.name(r) for r in SHIPPED_ROLES), strict=True))

    def as_login(who: str) -> str:
        return with_login(empty_dsn, user=scratch_roles.name(f"login_{who}"))

    admin = await asyncpg.connect(empty_dsn)
    try:
        await admin.execute(scratch_roles.script(ROOT / "sql/roles/01_create_roles.sql"))
        for who, role in roles.items():
            login = scratch_roles.name(f"login_{who}")
            await admin.execute(f"CREATE ROLE {login} LOGIN")
            await admin.execute(f"GRANT {role} TO {login}")
            await admin.execute(f"ALTER ROLE {login} SET role = {role}")
        # The recorder test app's own table (PG15 lets only owners create in public).
        await admin.execute(SCHEMA)
        await admin.execute(f"GRANT SELECT, INSERT, UPDATE ON public.test_runs TO {roles['worker']}")
    finally:
        await admin.close()

    # The owner migrates without superuser, then applies the GRANT set.
    migrated = cli("migrate", "--dsn", as_login("owner"))
    assert migrated.returncode == 0, migrated.stderr
    owner = await asyncpg.connect(as_login("owner"))
    try:
        assert not await owner.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        await owner.execute(scratch_roles.script(ROOT / "sql/roles/02_grants.sql"))
    finally:
        await owner.close()

    producer = await asyncpg.connect(as_login("producer"))
    try:
        await producer.execute("INSERT INTO notifyq.jobs (task) VALUES ('rec.work')")
        assert await producer.fetchval("SELECT notifyq.enqueue('rec.work', dedup_key => 'once')") > 0
        assert (
            len(await enqueue_many(producer, [NewJob("rec.work"), NewJob("rec.work", dedup_key="once")])) == 2
        )
        for sql in (
            "UPDATE notifyq.jobs SET priority = 1",
            "DELETE FROM notifyq.jobs",
            "SELECT count(*) FROM notifyq.jobs",
            "INSERT INTO notifyq.jobs (task, state) VALUES ('t', 'running')",
            "ALTER TABLE notifyq.jobs DISABLE TRIGGER jobs_guard_insert",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await producer.execute(sql)
    finally:
        await producer.close()

    # The daemon runs as the worker role: its GRANTs are enough for the whole job path.
    d = DaemonProcess(as_login("worker"), "tests.apps.recorder:registry", tmp_path / "d.log")
    try:
        await d.wait_event("daemon_ready")
        worker = await asyncpg.connect(as_login("worker"))
        try:
            try:
                await wait_for(
                    lambda: worker.fetchval(
                        "SELECT count(*) = 3 FROM notifyq.jobs WHERE state = 'succeeded'"
                    ),
                    15,
                    "the worker role's daemon to run all three jobs",
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}; daemon log: {d.log_path.read_text()[-2500:]}") from None
            for sql in (
                "ALTER TABLE notifyq.jobs DISABLE TRIGGER jobs_guard_insert",
                "INSERT INTO notifyq.jobs (task, state) VALUES ('t', 'running')",
                "DROP TABLE notifyq.jobs",
            ):
                with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.CheckViolationError)):
                    await worker.execute(sql)
        finally:
            await worker.close()
    finally:
        d.close()

    status = cli("status", "--json", "--dsn", as_login("observer"))
    assert status.returncode == 0, status.stderr
    observer = await asyncpg.connect(as_login("observer"))
    try:
        assert await observer.fetchval("SELECT count(*) FROM notifyq.jobs") == 3
        for sql in ("DELETE FROM notifyq.jobs", "INSERT INTO notifyq.jobs (task) VALUES ('t')"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await observer.execute(sql)
    finally:
        await observer.close()


async def test_passwords_never_reach_logs_metrics_or_errors(db_dsn: str, tmp_path: Path) -> None:
    # Trust auth ignores the passwords, so the daemon runs; they must still never be shown.
    dsn = with_login(db_dsn, user=ADMIN_USER, password="hunter2")
    listen = with_login(db_dsn, user=ADMIN_USER, query="password=hunter3")
    d = DaemonProcess(
        dsn,
        "tests.apps.recorder:registry",
        tmp_path / "d.log",
        listen_dsn=listen,
        http_address="127.0.0.1:0",
        log_level="debug",
    )
    try:
        await d.wait_event("daemon_ready")
        port = await d.http_port()
        metrics = await anyio.to_thread.run_sync(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        )
    finally:
        d.close()
    logs = d.log_path.read_text()
    assert f"{ADMIN_USER}:***@{ADMIN_HOST}" in logs
    for secret in ("hunter2", "hunter3"):
        assert secret not in logs and secret not in metrics
    # And when the connection fails, the error names the place without the secret.
    bad = DaemonProcess(
        "postgresql://postgres:hunter2@127.0.0.1:1/x?password=hunter3",
        "tests.apps.recorder:registry",
        tmp_path / "bad.log",
    )
    try:
        await bad.wait_event("database_unavailable")
    finally:
        bad.close()
    text = bad.log_path.read_text()
    assert "127.0.0.1:1" in text and "hunter2" not in text and "hunter3" not in text
