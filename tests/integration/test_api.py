"""The HTTP API in a real daemon, driven by a real HTTP client: tokens and their scopes, the SQL
contract's rules and errors over HTTP, jobs, callbacks and schedules."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
import pytest

from notifyq.api import tokens as tokens_module
from notifyq.daemon import Daemon
from notifyq.registry import Registry
from tests.callback_receiver import Receiver, running_receiver
from tests.support import cli, running_daemon, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


@asynccontextmanager
async def api(db_dsn: str) -> AsyncIterator[tuple[Daemon, httpx.AsyncClient]]:
    registry = Registry()

    @registry.task("work")
    async def work(job: object) -> None:
        pass

    async with running_daemon(
        db_dsn, registry, api_address="127.0.0.1:0", callback_allow=("127.0.0.1",), queues=("default", "other")
    ) as daemon:
        assert daemon.api is not None and daemon.api.port
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{daemon.api.port}", timeout=10) as client:
            yield daemon, client


def token(db_dsn: str, name: str, queues: str, *write: str) -> dict[str, str]:
    made = cli("tokens", "create", name, "--queues", queues, *write, "--dsn", db_dsn)
    assert made.returncode == 0, made.stderr
    return {"authorization": f"Bearer {made.stdout.strip()}"}


async def test_tokens_are_required_and_scoped(db_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens_module, "CACHE_SECONDS", 0.0)
    writer = token(db_dsn, "writer", "default", "--write")
    reader = token(db_dsn, "reader", "default")
    other = token(db_dsn, "other", "other", "--write")
    async with api(db_dsn) as (_, client):
        job = {"task": "work", "payload": {"n": 1}}
        assert (await client.post("/v1/jobs", json=job)).status_code == 401
        bad = {"authorization": "Bearer nqt_made-up"}
        assert (await client.post("/v1/jobs", json=job, headers=bad)).status_code == 401
        assert (await client.post("/v1/jobs", json=job, headers=reader)).status_code == 403
        assert (await client.post("/v1/jobs", json=job, headers=other)).status_code == 403
        made = await client.post("/v1/jobs", json=job, headers=writer)
        assert made.status_code == 201, made.text
        job_id = made.json()["id"]
        assert (await client.get(f"/v1/jobs/{job_id}", headers=reader)).status_code == 200
        assert (await client.get(f"/v1/jobs/{job_id}", headers=other)).status_code == 404  # not even its existence
        keyed = {"task": "nobody", "dedup_key": "shared"}  # no handler: it stays queued, holding its key
        assert (await client.post("/v1/jobs", json=keyed, headers=writer)).status_code == 201
        held = await client.post("/v1/jobs", json={**keyed, "queue": "other"}, headers=other)
        assert held.status_code == 409 and "id" not in held.json()  # held by a job it may not see
        assert cli("tokens", "revoke", "reader", "--dsn", db_dsn).returncode == 0
        assert (await client.get(f"/v1/jobs/{job_id}", headers=reader)).status_code == 401
        taken = cli("tokens", "create", "writer", "--queues", "default", "--dsn", db_dsn)
        assert taken.returncode != 0 and "is active" in taken.stderr
        renewed = token(db_dsn, "reader", "default")  # a revoked token's name is free again
        assert (await client.get(f"/v1/jobs/{job_id}", headers=renewed)).status_code == 200
        assert (await client.get(f"/v1/jobs/{job_id}", headers=reader)).status_code == 401  # still revoked
        assert cli("tokens", "revoke", "reader", "--dsn", db_dsn).returncode == 0
    listed = cli("tokens", "list", "--dsn", db_dsn)
    assert "reader" in listed.stdout and "revoked" in listed.stdout and "nqt_" not in listed.stdout


async def test_jobs_follow_the_sql_contract(conn: asyncpg.Connection, db_dsn: str) -> None:
    writer = token(db_dsn, "w", "*", "--write")
    async with api(db_dsn) as (_, client):
        first = await client.post("/v1/jobs", json={"task": "nobody", "dedup_key": "k1"}, headers=writer)
        again = await client.post("/v1/jobs", json={"task": "nobody", "dedup_key": "k1"}, headers=writer)
        assert (first.status_code, again.status_code) == (201, 200)
        assert first.json()["id"] == again.json()["id"] and again.json()["deduplicated"] is True
        assert first.headers["location"] == f"/v1/jobs/{first.json()['id']}"
        for body, field in (
            ({"task": "w", "priority": 5000}, "priority"),
            ({"task": "w", "queue": "Bad Queue"}, "queue"),
            ({"task": "w", "run_at": "2026-01-01T00:00:00Z", "delay_seconds": 5}, "body"),
            ({"task": "w", "payload": {"x": "a" * 1_100_000}}, "payload"),  # refused by the database's guard
        ):
            refused = await client.post("/v1/jobs", json=body, headers=writer)
            assert refused.status_code == 422, (body, refused.text)
            assert field in json.dumps(refused.json()["detail"]), refused.text
        job_id = first.json()["id"]
        cancelled = await client.post(f"/v1/jobs/{job_id}/cancel", headers=writer)
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        assert (await client.post(f"/v1/jobs/{job_id}/cancel", headers=writer)).status_code == 200  # idempotent
        retried = await client.post(f"/v1/jobs/{job_id}/retry", headers=writer)
        assert retried.status_code == 200 and retried.json()["state"] == "queued"
        assert (await client.get("/v1/jobs/999999999", headers=writer)).status_code == 404
        done = (await client.post("/v1/jobs", json={"task": "work"}, headers=writer)).json()["id"]
        await wait_for(lambda: conn.fetchval("SELECT state = 'succeeded' FROM notifyq.jobs WHERE id = $1", done), 10, "done")
        late = await client.post(f"/v1/jobs/{done}/cancel", headers=writer)
        assert late.status_code == 409 and "succeeded" in late.text
        for raw, field in ((b'{"task": "w", "payload": NaN}', "payload"),
                           (b'{"task": "w", "payload": ' + b"[" * 100 + b"]" * 100 + b"}", "payload")):  # fmt: skip
            odd = await client.post("/v1/jobs", content=raw, headers={**writer, "content-type": "application/json"})
            assert odd.status_code == 422 and field in odd.text, odd.text
        huge = await client.post("/v1/jobs", content=b"x" * (3 * 1024 * 1024), headers=writer)
        assert huge.status_code == 413

        async def chunks() -> AsyncIterator[bytes]:  # no content-length: the size is only seen as it comes
            for _ in range(40):
                yield b"x" * 100_000

        streamed = await client.post("/v1/jobs", content=chunks(), headers=writer)
        assert streamed.status_code == 413


async def test_a_callback_from_a_url_is_made_and_sent(
    conn: asyncpg.Connection, db_dsn: str, receiver: Receiver
) -> None:
    writer = token(db_dsn, "w", "default", "--write")
    async with api(db_dsn) as (_, client):
        made = await client.post("/v1/callbacks", json={"url": receiver.url("/ok"), "body": {"a": 1}}, headers=writer)
        assert made.status_code == 201, made.text
        await wait_for(lambda: receiver.received, 10, "the callback")
        assert receiver.received[0].body == b'{"a":1}'
        refused = await client.post("/v1/callbacks", json={"url": "http://10.0.0.1/x"}, headers=writer)
        assert refused.status_code == 422 and "not a globally routable" in refused.text
        no_label = await client.post("/v1/callbacks", json={"url": "http://a..example.com/"}, headers=writer)
        assert no_label.status_code == 422 and "url: host" in no_label.text, no_label.text
        neither = await client.post("/v1/callbacks", json={"body": 1}, headers=writer)
        assert neither.status_code == 422


async def test_schedules_are_put_read_and_deleted(conn: asyncpg.Connection, db_dsn: str) -> None:
    writer = token(db_dsn, "w", "default", "--write")
    async with api(db_dsn) as (_, client):
        put = await client.put("/v1/schedules/nightly", json={"cron": "0 3 * * *", "task": "work",
                                                              "timezone": "Europe/Berlin"}, headers=writer)  # fmt: skip
        assert put.status_code == 200 and put.json()["timezone"] == "Europe/Berlin", put.text
        assert (await client.get("/v1/schedules/nightly", headers=writer)).json()["cron"] == "0 3 * * *"
        bad = await client.put("/v1/schedules/x", json={"cron": "* * *", "task": "work"}, headers=writer)
        assert bad.status_code == 422 and "cron" in bad.text
        parser = await client.put("/v1/schedules/x", json={"cron": "61 * * * *", "task": "work"}, headers=writer)
        assert parser.status_code == 422 and "Bad minute" in parser.text
        ssrf = await client.put("/v1/schedules/x", json={"cron": "* * * * *", "task": "notifyq.http",
                                                         "payload": {"url": "http://169.254.169.254/"}},
                                headers=writer)  # fmt: skip
        assert ssrf.status_code == 422 and "not a globally routable" in ssrf.text
        assert (await client.get("/v1/schedules/%00", headers=writer)).status_code == 404
        not_utf8 = await client.put("/v1/schedules/s%ED%A0%80x", json={"cron": "* * * * *", "task": "work"},
                                    headers=writer)  # fmt: skip
        assert not_utf8.status_code == 422 and "not valid UTF-8" in not_utf8.text, not_utf8.text
        assert (await client.delete("/v1/schedules/nightly", headers=writer)).status_code == 204
        assert (await client.get("/v1/schedules/nightly", headers=writer)).status_code == 404


async def test_a_job_the_api_could_not_have_taken_is_still_shown(conn: asyncpg.Connection, db_dsn: str) -> None:
    """SQL producers are not held to the API's depth limit; such a payload comes back as its JSON text."""
    reader = token(db_dsn, "r", "default")
    deep = "[" * 3000 + "]" * 3000
    job_id = await conn.fetchval(
        "INSERT INTO notifyq.jobs (task, payload) VALUES ('nobody', jsonb_build_object('deep', $1::text::jsonb)) RETURNING id",
        deep,
    )
    async with api(db_dsn) as (_, client):
        shown = await client.get(f"/v1/jobs/{job_id}", headers=reader)
        assert shown.status_code == 200, shown.text
        assert shown.json()["payload_text"].replace(" ", "") == '{"deep":' + deep + "}"
        assert shown.json()["payload"] is None
        await conn.execute(
            "INSERT INTO notifyq.schedules (name, cron, task, payload) VALUES ('deep', '0 3 * * *', 'nobody', $1::text::jsonb)",
            deep,
        )
        schedule = await client.get("/v1/schedules/deep", headers=reader)
        assert schedule.status_code == 200 and schedule.json()["payload_text"].replace(" ", "") == deep
    for command in (("jobs", "show", str(job_id)), ("schedules", "show", "deep"), ("schedules", "list", "--json")):
        shown_by_cli = cli(*command, "--dsn", db_dsn)  # the CLI shows it as text too, not a traceback
        assert shown_by_cli.returncode == 0 and "[[[" in shown_by_cli.stdout, (command, shown_by_cli.stderr[-500:])


async def test_a_row_locked_by_another_session_is_a_409_not_a_stalled_api(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    writer = token(db_dsn, "w", "default", "--write")
    job_id = await conn.fetchval("INSERT INTO notifyq.jobs (task) VALUES ('nobody') RETURNING id")
    async with api(db_dsn) as (_, client):
        async with conn.transaction():  # an operator's open transaction holding the row
            await conn.execute("SELECT 1 FROM notifyq.jobs WHERE id = $1 FOR UPDATE", job_id)
            locked = await client.post(f"/v1/jobs/{job_id}/cancel", headers=writer)
            assert locked.status_code == 409 and "locked by another session" in locked.text, locked.text
            # Reading is not held up by the lock.
            assert (await client.get(f"/v1/jobs/{job_id}", headers=writer)).json()["state"] == "queued"
        assert (await client.post(f"/v1/jobs/{job_id}/cancel", headers=writer)).json()["state"] == "cancelled"
