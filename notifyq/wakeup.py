"""Wake-ups: why the claim loop looks for work, and the gated-NOTIFY protocol that brings most of them.

`WakeSource` is the one list of reasons (also the `source` label of `notifyq_wakeups_total`). Any part
may call `Wakeup.hint(source)`; hints that arrive while the dispatcher is busy fold into one, so a burst
of notifications or of freed slots costs one claim.

`WakeTopic` is the wake-up's side of the notifier (notifyq/notifier.py): it turns notifications on the
`notifyq` channel into hints, and keeps the idle locks on the notifier's session. While the dispatcher
waits for work, that session holds `pg_advisory_lock_shared(7243, hashtext(queue))` for each served
queue; the producers' trigger sees the lock and sends NOTIFY. When the dispatcher is busy the locks are
released, and producers skip the NOTIFY and its commit-time cost. After taking the locks the topic
wakes the dispatcher once more (`idle`), so that a job committed just before the locks were taken is
claimed by that re-check; after every (re)connect it wakes it to re-scan (`reconnect`), so nothing
notified while the session was down is lost. docs/design.md, section 4, has the protocol and its race.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from notifyq.notifier import Session

CHANNEL = "notifyq"


class WakeSource(enum.StrEnum):
    NOTIFY = "notify"  # a producer's NOTIFY for a served queue
    POLL = "poll"  # the safety poll (or a back-off after a failed claim)
    TIMER = "timer"  # a scheduled run_at, a stream's next look, the post-idle re-check
    SLOT = "slot"  # a runner finished a job
    RECONNECT = "reconnect"  # the notifier (re)connected: re-scan
    IDLE = "idle"  # the idle locks are held: one more look
    RESCUE = "rescue"  # maintenance put expired jobs back
    STOP = "stop"  # shutdown
    TICK = "tick"  # the loop's own turn to ping the systemd watchdog; not a wake-up, never counted


class Wakeup:
    def __init__(self) -> None:
        self._event = anyio.Event()
        self._sources: set[WakeSource] = set()

    def hint(self, source: WakeSource) -> None:
        self._sources.add(source)
        self._event.set()

    async def wait(self, seconds: float, on_timeout: WakeSource) -> set[WakeSource]:
        """Wait for hints, at most `seconds`; returns the sources (or `on_timeout`)."""
        if not self._event.is_set():
            with anyio.move_on_after(seconds if math.isfinite(seconds) else None):
                await self._event.wait()
        sources = self._sources or {on_timeout}
        self._sources = set()
        self._event = anyio.Event()
        return sources


class WakeTopic:
    """Notifications on the `notifyq` channel, and the idle locks, for one daemon's queues."""

    channel = CHANNEL

    def __init__(self, queues: Sequence[str], wakeup: Wakeup) -> None:
        self._queues = list(queues)
        self._served = frozenset(queues)
        self._wakeup = wakeup
        self._want_idle = False
        self._is_idle = False
        self._changed: Callable[[], None] = lambda: None

    def bind(self, changed: Callable[[], None]) -> None:
        """The notifier's callback for "this topic has session work to do"."""
        self._changed = changed

    def set_idle(self, idle: bool) -> None:
        """Ask for the idle locks to be taken (True) or released (False); applied on the session."""
        if idle != self._want_idle:
            self._want_idle = idle
            self._changed()

    @property
    def pending(self) -> bool:
        return self._want_idle != self._is_idle

    async def sync(self, session: Session) -> None:
        """Bring the session's idle locks to what the dispatcher asked for."""
        target = self._want_idle
        if target:
            await session.execute("take_idle_locks", self._queues)
        else:
            await session.execute("release_idle_locks")
        self._is_idle = target
        if target:
            self._wakeup.hint(WakeSource.IDLE)

    def on_message(self, payload: str) -> None:
        if payload in self._served:
            self._wakeup.hint(WakeSource.NOTIFY)

    def on_connected(self) -> None:
        self._wakeup.hint(WakeSource.RECONNECT)

    def on_disconnected(self) -> None:
        self._is_idle = False  # the locks went with the session; re-taken on the next one if still idle
