"""The leases this daemon holds, from claim until the completer has written the outcome.

The heartbeat extends all of them; a lease also records when the database last confirmed it, so that
when the database cannot be reached for longer than a lease the daemon knows its leases are gone and
stops their handlers rather than racing the daemon that rescues them.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass


@dataclass(slots=True)
class Lease:
    token: uuid.UUID
    confirmed_at: float


class Leases:
    def __init__(self, fence_after: float = math.inf) -> None:
        """`fence_after`: seconds unconfirmed after which a lease counts as lost here (the heartbeat's
        self-fence: a lease less a beat)."""
        self._held: dict[int, Lease] = {}
        self._fence_after = fence_after

    def add(self, job_id: int, token: uuid.UUID, since: float) -> None:
        """`since`: monotonic time taken before the claim statement, so the lease is never younger here
        than in the database."""
        self._held[job_id] = Lease(token, since)

    def discard(self, job_id: int, token: uuid.UUID) -> None:
        lease = self._held.get(job_id)
        if lease is not None and lease.token == token:
            del self._held[job_id]

    def snapshot(self) -> dict[int, uuid.UUID]:
        return {job_id: lease.token for job_id, lease in self._held.items()}

    def confirm(self, alive: set[int], at: float, snapshot: dict[int, uuid.UUID]) -> None:
        """Mark the leases the database just extended (as of `at`, taken before the statement)."""
        for job_id in alive:
            lease = self._held.get(job_id)
            if lease is not None and lease.token == snapshot.get(job_id):
                lease.confirmed_at = at

    def expired(self, lease_seconds: float, now: float | None = None) -> list[tuple[int, uuid.UUID]]:
        """(id, token) of leases the database has not confirmed for a whole lease length."""
        now = time.monotonic() if now is None else now
        return [
            (i, lease.token) for i, lease in self._held.items() if now - lease.confirmed_at > lease_seconds
        ]

    def fresh(self, job_id: int, token: uuid.UUID) -> bool:
        """Held under this token and confirmed by the database within `fence_after`."""
        lease = self._held.get(job_id)
        return (
            lease is not None
            and lease.token == token
            and time.monotonic() - lease.confirmed_at <= self._fence_after
        )

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._held
