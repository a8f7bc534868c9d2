"""`notifyq.http` in a real daemon against a real receiver on 127.0.0.1 (allow-listed, as an operator on
premises would): each answer's outcome, the signature checked by the Standard Webhooks library, and the
SSRF refusals failing their job at once."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from standardwebhooks import Webhook

from notifyq.callbacks import sender as sender_module
from notifyq.daemon import Daemon
from notifyq.registry import Registry
from tests.callback_receiver import Receiver, running_receiver
from tests.support import cli, running_daemon, wait_for

pytestmark = pytest.mark.timeout(60)

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
BILLING_SECRET = "whsec_" + base64.b64encode(b"b" * 32).decode()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


@asynccontextmanager
async def serving(db_dsn: str, receiver: Receiver) -> AsyncIterator[Daemon]:
    """A daemon with no app of its own: it serves notifyq.http (in the test's task, as anyio needs)."""
    endpoints = {
        "billing": {"url": receiver.url("/ok"), "secret": BILLING_SECRET, "headers": {"authorization": "Bearer b"}},
        "gone": {"url": receiver.url("/status/410")},
    }
    async with running_daemon(
        db_dsn, Registry(), callback_allow=("127.0.0.1",), callback_secret=(SECRET,), endpoints=endpoints
    ) as d:
        yield d


async def callback(conn: asyncpg.Connection, payload: dict[str, Any]) -> int:
    job_id: int = await conn.fetchval("SELECT notifyq.enqueue('notifyq.http', $1::jsonb)", json.dumps(payload))
    return job_id


async def settled(conn: asyncpg.Connection, job_id: int, *states: str) -> asyncpg.Record:
    query = "SELECT * FROM notifyq.jobs WHERE id = $1 AND (state::text = ANY($2::text[]) OR attempts > 0 AND state = 'queued')"
    row: asyncpg.Record = await wait_for(lambda: conn.fetchrow(query, job_id, list(states)), 15, f"job {job_id}")
    return row


async def test_a_callback_is_signed_and_its_answer_is_the_result(
    conn: asyncpg.Connection, db_dsn: str, receiver: Receiver
) -> None:
    async with serving(db_dsn, receiver) as daemon:
        job_id = await callback(conn, {"url": receiver.url("/ok"), "body": {"order": 42}, "headers": {"x-kind": "o"}})
        row = await settled(conn, job_id, "succeeded")
        assert row["state"] == "succeeded" and json.loads(row["result"]) == {"status": 200, "body": "thanks"}
        got = receiver.received[0]
        assert got.headers["webhook-id"] == str(job_id) and got.headers["x-kind"] == "o"
        assert got.headers["user-agent"].startswith("notifyq/")
        assert Webhook(SECRET).verify(got.body, got.headers) == {"order": 42}
        sample = daemon.metrics.registry.get_sample_value
        assert sample("notifyq_callbacks_total", {"host": "127.0.0.1", "outcome": "succeeded"}) == 1
        assert sample("notifyq_callback_duration_seconds_count", {"host": "127.0.0.1"}) == 1
        # A host that never answered (no such name) takes no label: made-up names cannot use them up.
        unknown = await callback(conn, {"url": "http://made-up-host.invalid/x", "timeout_seconds": 3})
        assert (await settled(conn, unknown))["state"] == "queued"
        assert sample("notifyq_callbacks_total", {"host": "made-up-host.invalid", "outcome": "retried"}) is None
        assert sample("notifyq_callbacks_total", {"host": "other", "outcome": "retried"}) == 1


async def test_an_endpoint_brings_its_url_headers_and_secret(
    conn: asyncpg.Connection, db_dsn: str, receiver: Receiver
) -> None:
    async with serving(db_dsn, receiver):
        job_id = await callback(conn, {"endpoint": "billing", "body": "paid"})
        assert (await settled(conn, job_id, "succeeded"))["state"] == "succeeded"
        got = receiver.received[0]
        assert got.headers["authorization"] == "Bearer b" and got.body == b"paid"
        Webhook(BILLING_SECRET).verify(got.body, got.headers, json_parse=False)


async def test_a_server_error_retries_on_the_webhook_schedule(
    conn: asyncpg.Connection, db_dsn: str, receiver: Receiver
) -> None:
    async with serving(db_dsn, receiver):
        job_id = await callback(conn, {"url": receiver.url("/status/503")})
        row = await settled(conn, job_id)
        assert row["state"] == "queued" and row["attempts"] == 1 and "HTTP 503" in row["last_error"]
        delay = row["run_at"] - row["finished_at"] if row["finished_at"] else row["run_at"] - row["started_at"]
        assert timedelta(seconds=3) <= delay <= timedelta(seconds=7)


async def test_retry_after_waits_without_spending_the_attempt(
    conn: asyncpg.Connection, db_dsn: str, receiver: Receiver
) -> None:
    async with serving(db_dsn, receiver):
        job_id = await callback(conn, {"url": receiver.url("/status/429?after=120")})
        await wait_for(lambda: receiver.received, 10, "the call")
        row = await wait_for(
            lambda: conn.fetchrow("SELECT * FROM notifyq.jobs WHERE id = $1 AND state = 'queued' AND run_at > now()", job_id),
            10,
            "the snooze",
        )
        assert row["attempts"] == 0 and row["snoozes"] == 1
        assert timedelta(seconds=100) < row["run_at"] - row["created_at"] < timedelta(seconds=140)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"url": "/redirect"}, "redirects are not followed"),
        ({"url": "/status/404"}, "HTTP 404"),
        ({"url": "http://10.0.0.1/hook"}, "refused: 10.0.0.1 resolves to 10.0.0.1: not a globally routable"),
        ({"url": "http://169.254.169.254/latest/meta-data/"}, "not a globally routable"),
        ({"url": "/ok", "headers": {"host": "evil"}}, "headers: 'host' is set by notifyq"),
        ({"endpoint": "nope"}, "no endpoint 'nope'"),
        ({"url": "http://0177.0.0.1/"}, "url:"),  # httpx refuses it: a failure, not a retry
        ({"url": "/ok", "headers": {"x": "caf\u00e9"}}, "printable ASCII"),
    ],
)
async def test_what_cannot_succeed_fails_at_once_saying_why(
    conn: asyncpg.Connection, db_dsn: str, receiver: Receiver, payload: dict[str, Any], reason: str
) -> None:
    async with serving(db_dsn, receiver):
        if str(payload.get("url", "")).startswith("/"):
            payload = {**payload, "url": receiver.url(payload["url"])}
        job_id = await callback(conn, payload)
        row = await settled(conn, job_id, "failed")
        assert row["state"] == "failed" and reason in row["last_error"], row["last_error"]


async def test_410_disables_the_endpoint_until_it_is_enabled(
    conn: asyncpg.Connection, db_dsn: str, receiver: Receiver
) -> None:
    async with serving(db_dsn, receiver):
        first = await callback(conn, {"endpoint": "gone"})
        assert "endpoint 'gone' disabled" in (await settled(conn, first, "failed"))["last_error"]
        assert await conn.fetchval("SELECT count(*) FROM notifyq.disabled_endpoints WHERE name = 'gone'") == 1
        second = await callback(conn, {"endpoint": "gone"})
        assert "is disabled" in (await settled(conn, second, "failed"))["last_error"]
        assert len(receiver.received) == 1  # the second was never sent
    endpoints = json.dumps({"gone": {"url": receiver.url("/status/410"), "secret": BILLING_SECRET}})
    listed = cli("endpoints", "list", "--dsn", db_dsn, env={"NOTIFYQ_ENDPOINTS": endpoints})
    assert "DISABLED: HTTP 410 Gone" in listed.stdout and BILLING_SECRET not in listed.stdout
    assert "/status/410" not in listed.stdout  # a URL's path can hold a secret
    assert cli("endpoints", "enable", "gone", "--dsn", db_dsn).returncode == 0
    assert await conn.fetchval("SELECT count(*) FROM notifyq.disabled_endpoints") == 0
    again = cli("endpoints", "enable", "gone", "--dsn", db_dsn)
    assert again.returncode != 0 and "is not disabled" in again.stderr


async def test_a_callback_that_finds_every_lookup_busy_waits_without_spending_an_attempt(
    conn: asyncpg.Connection, db_dsn: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Other producers' slow names holding every lookup thread are not this receiver's fault.
    monkeypatch.setattr(sender_module, "LOOKUP_THREADS", 0)
    async with serving(db_dsn, receiver):
        job_id = await callback(conn, {"url": receiver.url("/ok")})
        row = await wait_for(
            lambda: conn.fetchrow("SELECT * FROM notifyq.jobs WHERE id = $1 AND snoozes > 0", job_id), 10, "a wait"
        )
        assert row["state"] == "queued" and row["attempts"] == 0 and not receiver.received
