"""What a handler can ask for beyond its Job: `async def handler(job, ctx)`.

A handler that takes one argument gets the `Job`, as always; one that takes two gets the Job and a
`Context` for that attempt (the registry reads the signature once, at registration). The context is
where per-attempt services live: a logger already bound to the job, and the time left before the task's
timeout cancels the attempt. Durable steps, progress reports and cooperative cancellation will be added
here, so that handlers never need another calling convention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import anyio

from notifyq import logs
from notifyq.models import Job


@dataclass(frozen=True, slots=True)
class Context:
    """One attempt of one job, as its handler sees it."""

    job: Job
    deadline: float  # on anyio's clock; inf when the task has no timeout
    log: Any  # a structlog logger bound to job_id, task, queue and attempt

    @classmethod
    def for_attempt(cls, job: Job, timeout: float | None) -> Context:
        deadline = math.inf if timeout is None else anyio.current_time() + timeout
        log = logs.get("handler").bind(job_id=job.id, task=job.task, queue=job.queue, attempt=job.attempt)
        return cls(job=job, deadline=deadline, log=log)

    def time_left(self) -> float | None:
        """Seconds until the task's timeout cancels this attempt; None without a timeout. Call it from
        the event loop's thread (an async handler), not from a sync handler's thread."""
        if math.isinf(self.deadline):
            return None
        return max(0.0, self.deadline - anyio.current_time())
