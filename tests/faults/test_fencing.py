"""A daemon stops a handler whose lease it no longer holds, by either of two separate mechanisms:
the heartbeat finds the lease gone from the database, or (the database out of reach) the daemon fences
itself once its lease has gone unconfirmed for most of a lease length."""

from __future__ import annotations

import anyio
import asyncpg
import pytest

from notifyq import Job, Registry, enqueue
from notifyq.devserver import PrivateCluster
from tests.support import LogCapture, running_daemon, wait_for

pytestmark = pytest.mark.timeout(60)


def _blocking_registry(started: anyio.Event, cancelled: anyio.Event) -> Registry:
    registry = Registry()

    @registry.task("hold")
    async def hold(job: Job) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    return registry


async def test_a_lease_taken_away_in_the_database_cancels_its_handler_at_the_next_beat(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    started, cancelled = anyio.Event(), anyio.Event()
    log = LogCapture()
    # lease 3 s: a beat every 1 s; the self-fence would need 2 s without confirmation, and says so.
    async with running_daemon(db_dsn, _blocking_registry(started, cancelled), log=log, lease_seconds=3):
        job_id = await enqueue(conn, "hold")
        with anyio.fail_after(10):
            await started.wait()
        # An operator puts the job back by hand (the lease is gone; the job waits an hour).
        await conn.execute(
            "UPDATE notifyq.jobs SET state = 'queued', lease_token = NULL, leased_until = NULL,"
            " worker_id = NULL, run_at = now() + interval '1 hour' WHERE id = $1",
            job_id,
        )
        with anyio.fail_after(10):
            await cancelled.wait()
        [event] = await wait_for(lambda: log.events("lease_lost_cancelling"), 5, "the cancel to be logged")
        assert (event["job_id"], event["reason"]) == (job_id, "not held in the database")
    row = await conn.fetchrow("SELECT state::text, attempts FROM notifyq.jobs WHERE id = $1", job_id)
    assert (row["state"], row["attempts"]) == ("queued", 1), "the stale run wrote nothing"


async def test_a_daemon_that_cannot_reach_the_database_fences_its_own_handlers(
    cluster: PrivateCluster,
) -> None:
    started, cancelled = anyio.Event(), anyio.Event()
    log = LogCapture()
    conn = await asyncpg.connect(cluster.dsn)
    try:
        async with running_daemon(
            cluster.dsn,
            _blocking_registry(started, cancelled),
            log=log,
            lease_seconds=2,
            shutdown_timeout_seconds=1,
        ):
            job_id = await enqueue(conn, "hold")
            with anyio.fail_after(10):
                await started.wait()
            await conn.close()
            cluster.stop("immediate")
            # Another daemon may rescue the job once its lease ends: this one must stop running it.
            with anyio.fail_after(10):
                await cancelled.wait()
            [event] = await wait_for(
                lambda: log.events("lease_lost_cancelling"), 5, "the cancel to be logged"
            )
            assert (event["job_id"], event["reason"]) == (job_id, "unconfirmed for most of a lease")
            cluster.start()  # so that the daemon's stop is not a wait for the database
    finally:
        await conn.close()
