"""Wake hints for the dispatcher.

Any part may call `hint(source)`; hints that arrive while the dispatcher is busy fold into one, so a
burst of notifications or of freed slots costs one claim. The sources are the `source` label of
`notifyq_wakeups_total`.
"""

from __future__ import annotations

import math

import anyio

NOTIFY = "notify"
POLL = "poll"
TIMER = "timer"
SLOT = "slot"
RECONNECT = "reconnect"
IDLE = "idle"
RESCUE = "rescue"


class Wakeup:
    def __init__(self) -> None:
        self._event = anyio.Event()
        self._sources: set[str] = set()

    def hint(self, source: str) -> None:
        self._sources.add(source)
        self._event.set()

    async def wait(self, seconds: float, on_timeout: str) -> set[str]:
        """Wait for hints, at most `seconds`; returns the sources (or `on_timeout`)."""
        if not self._event.is_set():
            with anyio.move_on_after(seconds if math.isfinite(seconds) else None):
                await self._event.wait()
        sources = self._sources or {on_timeout}
        self._sources = set()
        self._event = anyio.Event()
        return sources
