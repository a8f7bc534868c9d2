"""A reading of the queue, shared by the metrics refresher, `notifyq status` and `notifyq check`.

Pure data shaping: the rows come from `Store.queue_stats()` and `Store.live_workers()`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from notifyq.models import QueueStat, QueueState, ScheduleDetail, WorkerRow

STATES = tuple(state.value for state in QueueState)  # what queue_stats reads


@dataclass(slots=True)
class QueueSummary:
    queue: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))
    oldest_age: float = 0.0  # seconds since the oldest runnable queued job's run_at


@dataclass(slots=True)
class Overview:
    queues: dict[str, QueueSummary]
    orphans: dict[tuple[str, str], int]  # (queue, task) -> queued jobs no handler takes
    workers: Sequence[WorkerRow]
    schedules: Sequence[ScheduleDetail] = ()  # for `notifyq status`; the gauges do not read them

    def counts(self) -> dict[tuple[str, str], int]:
        return {(q.queue, s): n for q in self.queues.values() for s, n in q.counts.items() if n}

    def oldest(self) -> dict[str, float]:
        return {q.queue: q.oldest_age for q in self.queues.values()}

    def orphans_by_queue(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (queue, _), n in self.orphans.items():
            out[queue] = out.get(queue, 0) + n
        return out

    def total(self, state: str) -> int:
        return sum(q.counts[state] for q in self.queues.values())


def handled_by(workers: Iterable[WorkerRow]) -> set[tuple[str, str]]:
    """(queue, task) pairs that some live worker serves."""
    return {(q, t) for w in workers for q in w.queues for t in w.tasks}


def summarize(
    rows: Iterable[QueueStat],
    workers: Sequence[WorkerRow],
    handled: set[tuple[str, str]] | None = None,
) -> Overview:
    """Fold queue_stats rows into per-queue summaries; `handled` defaults to what live workers serve."""
    known = handled_by(workers) if handled is None else handled
    queues: dict[str, QueueSummary] = {}
    orphans: dict[tuple[str, str], int] = {}
    for row in rows:
        queue, task, state, jobs = row.queue, row.task, row.state, row.jobs
        summary = queues.setdefault(queue, QueueSummary(queue))
        summary.counts[state] = summary.counts.get(state, 0) + jobs
        if state == QueueState.QUEUED and row.oldest_age is not None:
            summary.oldest_age = max(summary.oldest_age, row.oldest_age)
        if state in (QueueState.QUEUED, QueueState.SCHEDULED) and (queue, task) not in known:
            orphans[(queue, task)] = orphans.get((queue, task), 0) + jobs
    return Overview(queues=dict(sorted(queues.items())), orphans=orphans, workers=workers)
