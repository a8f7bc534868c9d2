"""Backoff policy: pure functions, no I/O.

The delay before retry n (n = attempts already spent) is `base * factor ** (n - 1)`, capped, then
stretched by up to `jitter` of itself. Jitter only ever adds, so a retry never runs before its backoff,
and a burst of failures at the same moment spreads out instead of coming back as one wave.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    base_seconds: float = 5.0
    factor: float = 2.0
    cap_seconds: float = 3600.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if self.base_seconds < 0 or self.cap_seconds < 0:
            raise ValueError("backoff seconds must be >= 0")
        if self.factor < 1:
            raise ValueError("backoff factor must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff jitter must be between 0 and 1")

    def floor(self, attempt: int) -> float:
        """The least delay after `attempt` failed attempts (attempt >= 1)."""
        exponent = max(attempt - 1, 0)
        # Stop growing once past the cap so huge attempt counts cannot overflow a float.
        if exponent > 64:
            return self.cap_seconds
        return float(min(self.cap_seconds, self.base_seconds * self.factor**exponent))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The delay to use: the floor plus up to `jitter` of it."""
        floor = self.floor(attempt)
        draw = (rng or random).random()
        return floor * (1.0 + self.jitter * draw)
