"""`notifyq endpoints`: the configured callback endpoints, and enabling one a 410 disabled."""

from __future__ import annotations

import orjson

from notifyq.config import Settings
from notifyq.status import _table
from notifyq.store import Store


async def listing(settings: Settings, as_json: bool) -> str:
    """Each configured endpoint (never its secret or header values) and whether a 410 disabled it; a
    disabled name no longer configured is listed too."""
    store = await Store.open(settings.dsn, max_size=1, statement_cache_size=settings.statement_cache_size)
    try:
        disabled = {name: (reason, when) for name, reason, when in await store.list_disabled_endpoints()}
    finally:
        await store.close()
    names = sorted(set(settings.endpoints) | set(disabled))
    rows = []
    for name in names:
        configured = settings.endpoints.get(name)
        reason, when = disabled.get(name, (None, None))
        rows.append(
            {
                "name": name,
                # Scheme and host only: a URL's path or query can hold a secret (a chat webhook's token).
                "url": _origin(configured.url) if configured else None,
                "signed": bool(configured and configured.secret) or bool(settings.callback_secret),
                "disabled": reason is not None,
                "reason": reason,
                "disabled_at": when.isoformat() if when else None,
            }
        )
    if as_json:
        return "\n".join(orjson.dumps(r).decode() for r in rows)
    if not rows:
        return "no endpoints configured ([endpoints.NAME] in the settings file)"
    table = [
        [
            str(r["name"]),
            str(r["url"] or "(not configured)"),
            "yes" if r["signed"] else "no",
            f"DISABLED: {r['reason']}" if r["disabled"] else "enabled",
        ]
        for r in rows
    ]
    return _table(["NAME", "URL", "SIGNED", "STATE"], table)


async def enable(settings: Settings, name: str) -> bool:
    store = await Store.open(settings.dsn, max_size=1, statement_cache_size=settings.statement_cache_size)
    try:
        return await store.enable_endpoint(name)
    finally:
        await store.close()


def _origin(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}/..."
