"""The producer contract's limits, exactly at their boundaries, through a plain INSERT and through
notifyq.enqueue(); and enqueue/enqueue_many inside a transaction that rolls back leave no job."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from notifyq import NewJob, enqueue, enqueue_many

pytestmark = pytest.mark.timeout(30)

MIB = 1048576
# jsonb prints an object as `{"x": "..."}`: 9 bytes around the string.
WRAPPER = len('{"x": ""}')


def payload_of(size: int, char: str = "a") -> str:
    """JSON text that is exactly jsonb's own text form, `size` bytes long (char: 1 or 2 UTF-8 bytes)."""
    width = len(char.encode())
    count, rest = divmod(size - WRAPPER, width)
    assert rest == 0, "size does not fit the character's width"
    return '{"x": "' + char * count + '"}'


TYPES = {
    "task": "text",
    "queue": "text",
    "priority": "int",
    "max_attempts": "int",
    "dedup_key": "text",
    "payload": "jsonb",
}

# (column, value, accepted)
BOUNDARIES: list[tuple[str, Any, bool]] = [
    ("priority", -1000, True),
    ("priority", 1000, True),
    ("priority", -1001, False),
    ("priority", 1001, False),
    ("max_attempts", 1, True),
    ("max_attempts", 1000, True),
    ("max_attempts", 0, False),
    ("max_attempts", 1001, False),
    ("payload", payload_of(MIB), True),
    ("payload", payload_of(MIB + 1), False),
    # Bytes, not characters: 2-byte characters, far fewer than MIB of them, still over the limit.
    ("payload", payload_of(MIB + 1, "é"), False),
    ("payload", payload_of(MIB - 1, "é"), True),
    ("dedup_key", None, True),
    ("dedup_key", "", False),
    ("dedup_key", "k" * 200, True),
    ("dedup_key", "k" * 201, False),
    ("task", "t" * 200, True),
    ("task", "t" * 201, False),
    ("task", "", False),
    ("queue", "q" * 63, True),
    ("queue", "q" * 64, False),
]


def case_id(case: tuple[str, Any, bool]) -> str:
    column, value, accepted = case
    if isinstance(value, str):
        shown = f"{len(value)}chars"
        if column == "payload":
            shown = f"{len(value.encode())}bytes" + (
                "_multibyte" if len(value) != len(value.encode()) else ""
            )
    else:
        shown = str(value)
    return f"{column}-{shown}-{'ok' if accepted else 'refused'}"


Producer = Callable[[asyncpg.Connection, dict[str, Any]], Awaitable[int]]


async def plain_insert(conn: asyncpg.Connection, values: dict[str, Any]) -> int:
    columns = list(values)
    params = ", ".join(f"${i}::{TYPES[c]}" for i, c in enumerate(columns, 1))
    job_id: int = await conn.fetchval(
        f"INSERT INTO notifyq.jobs ({', '.join(columns)}) VALUES ({params}) RETURNING id",
        *values.values(),
    )
    return job_id


async def sql_enqueue(conn: asyncpg.Connection, values: dict[str, Any]) -> int:
    columns = list(values)
    args = ", ".join(f"{c} => ${i}::{TYPES[c]}" for i, c in enumerate(columns, 1))
    job_id: int = await conn.fetchval(f"SELECT notifyq.enqueue({args})", *values.values())
    return job_id


PRODUCERS: dict[str, Producer] = {"insert": plain_insert, "enqueue": sql_enqueue}


@pytest.mark.parametrize("case", BOUNDARIES, ids=[case_id(c) for c in BOUNDARIES])
@pytest.mark.parametrize("producer", list(PRODUCERS))
async def test_limits_hold_exactly_at_the_boundary(
    conn: asyncpg.Connection, producer: str, case: tuple[str, Any, bool]
) -> None:
    column, value, accepted = case
    values = {"task": "t", column: value}
    if column == "payload":
        # The guard measures jsonb's text form; the payload is built to be exactly that text.
        assert await conn.fetchval("SELECT $1::jsonb::text = $1::text", value)
    produce = PRODUCERS[producer]

    if accepted:
        job_id = await produce(conn, values)
        stored = await conn.fetchval(
            f"SELECT {column}{'::text' if column == 'payload' else ''} FROM notifyq.jobs WHERE id = $1",
            job_id,
        )
        assert stored == value
        return

    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await produce(conn, values)
    error = caught.value
    assert error.sqlstate == "23514"
    assert f"notifyq.jobs.{column}:" in str(error)
    assert error.column_name == column
    assert await conn.fetchval("SELECT count(*) FROM notifyq.jobs") == 0


async def test_the_payload_bound_is_the_jsonb_text_form(conn: asyncpg.Connection) -> None:
    # Sent without the space jsonb prints, the text is 1 byte shorter than what is measured: exactly the
    # limit as sent, one byte over it as stored.
    compact = payload_of(MIB + 1).replace('": "', '":"')
    assert len(compact.encode()) == MIB
    with pytest.raises(
        asyncpg.CheckViolationError, match=r"notifyq\.jobs\.payload: .* \(got 1048577 bytes\)"
    ):
        await conn.execute("INSERT INTO notifyq.jobs (task, payload) VALUES ('t', $1::jsonb)", compact)
    # Sent with extra spaces jsonb drops, it is longer than what is measured, and fits.
    loose = payload_of(MIB).replace('{"x": ', '{ "x" :  ')
    assert len(loose.encode()) == MIB + 3
    job_id = await conn.fetchval(
        "INSERT INTO notifyq.jobs (task, payload) VALUES ('t', $1::jsonb) RETURNING id", loose
    )
    assert (
        await conn.fetchval("SELECT octet_length(payload::text) FROM notifyq.jobs WHERE id = $1", job_id)
        == MIB
    )


# -- a rolled-back transaction leaves no job ------------------------------------------------------------


async def py_enqueue(conn: asyncpg.Connection) -> None:
    await enqueue(conn, "t", {"n": 1}, dedup_key="rolled-back")


async def py_enqueue_many(conn: asyncpg.Connection) -> None:
    ids = await enqueue_many(
        conn, [NewJob("t", {"n": n}, dedup_key=f"rb{n}") for n in range(3)] + [NewJob("u")]
    )
    assert len(ids) == 4


async def sql_enqueue_one(conn: asyncpg.Connection) -> None:
    await conn.fetchval("SELECT notifyq.enqueue('t', '{\"n\": 1}', dedup_key => 'rolled-back')")


async def sql_enqueue_many(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch(
        "SELECT * FROM notifyq.enqueue_many(ARRAY['t', 't', 'u'], dedup_keys => ARRAY['rb1', 'rb2', NULL])"
    )
    assert len(rows) == 3


ROLLBACK_PRODUCERS: dict[str, Callable[[asyncpg.Connection], Awaitable[None]]] = {
    "python_enqueue": py_enqueue,
    "python_enqueue_many": py_enqueue_many,
    "sql_enqueue": sql_enqueue_one,
    "sql_enqueue_many": sql_enqueue_many,
}


@pytest.mark.parametrize("name", list(ROLLBACK_PRODUCERS))
async def test_a_rolled_back_enqueue_leaves_no_job(conn: asyncpg.Connection, db_dsn: str, name: str) -> None:
    produce = ROLLBACK_PRODUCERS[name]
    other = await asyncpg.connect(db_dsn)
    try:
        tx = conn.transaction()
        await tx.start()
        await produce(conn)
        # The jobs exist inside the transaction and nowhere else.
        assert await conn.fetchval("SELECT count(*) FROM notifyq.jobs") > 0
        assert await other.fetchval("SELECT count(*) FROM notifyq.jobs") == 0
        await tx.rollback()
        assert await conn.fetchval("SELECT count(*) FROM notifyq.jobs") == 0
        assert await other.fetchval("SELECT count(*) FROM notifyq.jobs") == 0
        # The dedup keys the rolled-back jobs held are free: the same call makes new jobs once committed.
        async with conn.transaction():
            await produce(conn)
        assert await other.fetchval("SELECT count(*) FROM notifyq.jobs") > 0
    finally:
        await other.close()
