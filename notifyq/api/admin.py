"""`notifyq tokens`: make, list and revoke the HTTP API's bearer tokens."""

from __future__ import annotations

import re

import orjson

from notifyq.api.tokens import new_token
from notifyq.config import QUEUE_PATTERN, Settings
from notifyq.status import _table
from notifyq.store import Store

NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")


async def _open(settings: Settings) -> Store:
    return await Store.open(settings.dsn, max_size=1, statement_cache_size=settings.statement_cache_size)


def check(name: str, queues: list[str]) -> str | None:
    """What is wrong with a token's name or queues, or None."""
    if not NAME.fullmatch(name):
        return f"token name {name!r} must match {NAME.pattern}"
    if not queues:
        return "--queues: at least one queue, or * for every queue"
    for queue in queues:
        if queue != "*" and not QUEUE_PATTERN.fullmatch(queue):
            return f"--queues: {queue!r} must match {QUEUE_PATTERN.pattern} (or be *)"
    return None


async def create(settings: Settings, name: str, queues: list[str], can_write: bool) -> str | None:
    """A new token (shown once), or None when the name is taken."""
    token, digest = new_token()
    store = await _open(settings)
    try:
        async with store.connection() as conn:
            made = await conn.fetch(store.query("create_token"), name, digest, queues, can_write)
    finally:
        await store.close()
    return token if made else None


async def listing(settings: Settings, as_json: bool) -> str:
    store = await _open(settings)
    try:
        async with store.connection() as conn:
            rows = await conn.fetch(store.query("list_tokens"))
    finally:
        await store.close()
    docs = [
        {
            "name": r["name"],
            "queues": list(r["queues"]),
            "write": r["can_write"],
            "created_at": r["created_at"].isoformat(),
            "revoked_at": r["revoked_at"].isoformat() if r["revoked_at"] else None,
        }
        for r in rows
    ]
    if as_json:
        return "\n".join(orjson.dumps(d).decode() for d in docs)
    if not docs:
        return "no tokens (notifyq tokens create NAME --queues ...)"
    table = [
        [str(d["name"]), ",".join(d["queues"]), "write" if d["write"] else "read",
         "revoked" if d["revoked_at"] else "active"]
        for d in docs
    ]  # fmt: skip
    return _table(["NAME", "QUEUES", "SCOPE", "STATE"], table)


async def revoke(settings: Settings, name: str) -> bool:
    store = await _open(settings)
    try:
        async with store.connection() as conn:
            return bool(await conn.fetch(store.query("revoke_token"), name))
    finally:
        await store.close()
