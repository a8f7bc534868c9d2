"""Bad input from producers in any language: each case is refused at INSERT with an error that names the
field, or accepted and handled without hurting the daemon; metric labels stay bounded."""

from __future__ import annotations

import re

import anyio
import asyncpg
import pytest

from notifyq import Job, Registry, enqueue
from notifyq.metrics import MAX_QUEUE_LABELS
from tests.support import running_daemon, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("sql", "field"),
    [
        (
            "INSERT INTO notifyq.jobs (task, payload) VALUES ('t', jsonb_build_object('x', repeat('a', 2000000)))",
            "payload",
        ),
        ("INSERT INTO notifyq.jobs (task, priority) VALUES ('t', 40000)", "priority"),
        ("INSERT INTO notifyq.jobs (task, priority) VALUES ('t', -40000)", "priority"),
        ("INSERT INTO notifyq.jobs (task, max_attempts) VALUES ('t', 5000)", "max_attempts"),
        ("INSERT INTO notifyq.jobs (task, max_attempts) VALUES ('t', -1)", "max_attempts"),
        ("INSERT INTO notifyq.jobs (task, run_at) VALUES ('t', 'infinity')", "run_at"),
        ("INSERT INTO notifyq.jobs (task, run_at) VALUES ('t', '-infinity')", "run_at"),
        ("INSERT INTO notifyq.jobs (task, queue) VALUES ('t', 'it''s')", "queue"),
        ("INSERT INTO notifyq.jobs (task, queue) VALUES ('t', 'a;DROP TABLE x')", "queue"),
        ("INSERT INTO notifyq.jobs (task, queue) VALUES ('t', 'очередь')", "queue"),
        ("INSERT INTO notifyq.jobs (task, queue) VALUES ('t', '')", "queue"),
        ("INSERT INTO notifyq.jobs (task) VALUES ('')", "task"),
        ("INSERT INTO notifyq.jobs (task, state) VALUES ('t', 'running')", "state"),
        (
            "INSERT INTO notifyq.jobs (task, lease_token, leased_until) VALUES ('t', gen_random_uuid(), now())",
            "lease_token",
        ),
        ("SELECT notifyq.enqueue('t', priority => 2000)", "priority"),
        ("SELECT notifyq.enqueue('t', max_attempts => 0)", "max_attempts"),
    ],
)
async def test_refused_at_insert_naming_the_field(conn: asyncpg.Connection, sql: str, field: str) -> None:
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await conn.execute(sql)
    assert caught.value.column_name == field
    assert f"notifyq.jobs.{field}" in str(caught.value)
    assert await conn.fetchval("SELECT count(*) FROM notifyq.jobs") == 0


async def test_nul_bytes_are_refused_by_postgres_itself(conn: asyncpg.Connection) -> None:
    # Neither text nor jsonb can hold NUL: the type system refuses it before any trigger runs.
    with pytest.raises(asyncpg.UntranslatableCharacterError):
        await conn.execute("""INSERT INTO notifyq.jobs (task, payload) VALUES ('t', '{"a": "\\u0000"}')""")
    with pytest.raises(asyncpg.CharacterNotInRepertoireError):
        await conn.execute("INSERT INTO notifyq.jobs (task) VALUES ($1)", "t\x00x")
    assert await conn.fetchval("SELECT count(*) FROM notifyq.jobs") == 0


async def test_odd_but_valid_rows_are_handled(conn: asyncpg.Connection, db_dsn: str) -> None:
    registry = Registry()
    seen: dict[int, object] = {}

    @registry.task("mail.send", max_attempts=1)
    async def send(job: Job) -> None:
        seen[job.id] = job.payload
        job.payload["to"]  # expects an object; a list, string, number or null raises

    ids = {}
    for name, payload in [
        ("list", "[]"),
        ("string", '"x"'),
        ("number", "42"),
        ("null", "null"),
        ("object", '{"to": "a@b.c"}'),
    ]:
        ids[name] = await conn.fetchval(
            "INSERT INTO notifyq.jobs (task, payload) VALUES ('mail.send', $1::jsonb) RETURNING id", payload
        )
    old = await conn.fetchval(
        """INSERT INTO notifyq.jobs (task, run_at, payload) VALUES ('mail.send', '1970-01-01', '{"to": "x"}') RETURNING id"""
    )
    far = await conn.fetchval(
        "INSERT INTO notifyq.jobs (task, run_at) VALUES ('mail.send', '9999-12-31') RETURNING id"
    )
    async with running_daemon(db_dsn, registry):
        await wait_for(lambda: _finished(conn, [*ids.values(), old]), 10, "every runnable job to finish")
        after = await enqueue(conn, "mail.send", {"to": "x"})
        await wait_for(lambda: _finished(conn, [after]), 10, "the daemon still works")
    states = {r["id"]: r["state"] for r in await conn.fetch("SELECT id, state::text FROM notifyq.jobs")}
    assert states[ids["object"]] == "succeeded" and states[old] == "succeeded"
    for name in ("list", "string", "number", "null"):
        assert states[ids[name]] == "failed", name
    assert states[far] == "queued", "a job for the year 9999 waits"
    assert seen[ids["null"]] is None and seen[ids["number"]] == 42


async def _finished(conn: asyncpg.Connection, ids: list[int]) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT count(*) = 0 FROM notifyq.jobs WHERE id = ANY($1) AND state IN ('queued', 'running')", ids
        )
    )


async def test_metric_labels_stay_bounded(conn: asyncpg.Connection, db_dsn: str) -> None:
    registry = Registry()

    @registry.task("known")
    async def known(job: Job) -> None:
        pass

    # Three times as many queues as there may be labels, and a task name per row that no handler knows, as
    # a careless or hostile producer might send: MAX_QUEUE_LABELS busy queues (3 jobs each) and twice as
    # many quiet ones (1 job each). None is served, so the jobs stay queued and every reading sees them.
    busy = [f"busy{i}" for i in range(MAX_QUEUE_LABELS)]
    quiet = [f"quiet{i}" for i in range(2 * MAX_QUEUE_LABELS)]
    assert len(busy) + len(quiet) > MAX_QUEUE_LABELS + 2, "the data must exceed the bound under test"
    await conn.execute(
        "INSERT INTO notifyq.jobs (task, queue)"
        " SELECT 'task-' || row_number() OVER (), q FROM unnest($1::text[]) q, generate_series(1, 3)"
        " UNION ALL SELECT 'task-quiet-' || q, q FROM unnest($2::text[]) q",
        busy,
        quiet,
    )
    async with running_daemon(db_dsn, registry, http_address="127.0.0.1:0", stats_interval_seconds=1) as d:
        assert d.http is not None
        await wait_for(
            lambda: d.metrics.registry.get_sample_value("notifyq_stats_last_refresh_timestamp_seconds"),
            10,
            "the database gauges to refresh",
        )
        text = await anyio.to_thread.run_sync(lambda: _get(d.http.bound_port))  # type: ignore[union-attr]
    queues = set(re.findall(r'queue="([^"]+)"', text))
    tasks = set(re.findall(r'task="([^"]+)"', text))
    # The served queue, the MAX_QUEUE_LABELS busiest queues, and `other` for the rest: no more, no fewer.
    assert len(queues) <= MAX_QUEUE_LABELS + 2, f"{len(queues)} queue labels"
    assert queues == {"default", "other", *busy}, sorted(queues)
    folded = re.search(r'^notifyq_jobs_without_handler\{queue="other"\} (\S+)$', text, re.M)
    assert folded is not None and float(folded.group(1)) == len(quiet), "the quiet queues fold into `other`"
    assert tasks <= {"known", "notifyq.http", "other"}, tasks  # the registered tasks (callbacks are built in)


def _get(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()
