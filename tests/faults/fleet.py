"""A supervisor for daemon processes in fault scenarios: start N, kill some, bring them back."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any

from tests.support import DaemonProcess

APP = "tests.apps.recorder:registry"


class Fleet:
    def __init__(self, dsn: str, folder: Path, size: int, app: str = APP, **settings: Any) -> None:
        self._dsn = dsn
        self._app = app
        self._folder = folder
        self._settings = settings
        self._spawned = 0
        self.daemons: list[DaemonProcess] = []
        self.kills = 0
        self.deaths: dict[int, float] = {}  # pid -> when it died (epoch seconds), for the checker
        self.journal = folder / "journal"  # where the recorder app writes the end of each run
        self.journal.mkdir(exist_ok=True)
        for _ in range(size):
            self.spawn()

    def spawn(self) -> DaemonProcess:
        d = DaemonProcess(
            self._dsn,
            self._app,
            self._folder / f"daemon{self._spawned}.log",
            extra_env={"NOTIFYQ_RECORDER_JOURNAL": str(self.journal)},
            **self._settings,
        )
        self._spawned += 1
        self.daemons.append(d)
        return d

    async def ready(self) -> None:
        for d in self.daemons:
            if d.proc.poll() is None:
                await d.wait_event("daemon_ready", timeout=20)

    def alive(self) -> list[DaemonProcess]:
        return [d for d in self.daemons if d.proc.poll() is None]

    def kill_one(self, rng: random.Random, among: set[int] | None = None) -> DaemonProcess:
        """SIGKILL one live daemon (one whose pid is in `among`, when given) and start a replacement."""
        candidates = [d for d in self.alive() if among is None or d.pid in among] or self.alive()
        victim = rng.choice(candidates)
        victim.signal(signal.SIGKILL)
        victim.wait(10)
        self.deaths[victim.pid] = time.time()
        self.kills += 1
        self.daemons.remove(victim)
        victim.close()
        return self.spawn()

    def respawn_dead(self) -> int:
        """Replace daemons that died on their own (a poison job); returns how many."""
        dead = [d for d in self.daemons if d.proc.poll() is not None]
        for d in dead:
            self.deaths[d.pid] = time.time()  # at the latest: it died since the last look
            self.daemons.remove(d)
            d.close()
            self.spawn()
        return len(dead)

    def close(self) -> None:
        for d in self.daemons:
            d.close()

    def log_lines(self) -> int:
        return sum(len(d.log_path.read_text().splitlines()) for d in self.daemons)

    def event_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for d in self.daemons:
            for event in d.events():
                counts[event.get("event", "?")] = counts.get(event.get("event", "?"), 0) + 1
        return counts
