"""Every Prometheus metric notifyq exports. Names and labels are public API.

Label values never come from unvalidated row data: `queue` is one of the served queues (validated
config) and `task` one of the registry's names; anything else is reported as `other`.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

OTHER = "other"

_DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1200,
    1800,
)
_WAIT_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    900,
    3600,
)


class Metrics:
    """One daemon's metrics, in a registry of its own."""

    def __init__(self, queues: Iterable[str], tasks: Iterable[str], version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._queues = frozenset(queues)
        self._tasks = frozenset(tasks)
        r = self.registry
        self.jobs_started = Counter(
            "notifyq_jobs_started", "Jobs whose handler was started.", ["queue", "task"], registry=r
        )
        self.jobs_completed = Counter(
            "notifyq_jobs_completed",
            "Attempts finished, by outcome.",
            ["queue", "task", "outcome"],
            registry=r,
        )
        self.job_duration = Histogram(
            "notifyq_job_duration_seconds",
            "Handler run time.",
            ["queue", "task"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.job_wait = Histogram(
            "notifyq_job_wait_seconds",
            "From run_at (runnable) to handler start.",
            ["queue", "task"],
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.jobs_running = Gauge("notifyq_jobs_running", "Handlers running now.", ["queue"], registry=r)
        self.worker_slots = Gauge("notifyq_worker_slots", "Configured concurrency.", registry=r)
        self.claims = Counter("notifyq_claims", "Claim statements run.", registry=r)
        self.claim_batch = Histogram(
            "notifyq_claim_batch_size",
            "Jobs returned per claim.",
            buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=r,
        )
        self.wakeups = Counter("notifyq_wakeups", "Dispatcher wake-ups by source.", ["source"], registry=r)
        self.listener_connected = Gauge(
            "notifyq_listener_connected", "1 while the LISTEN connection is up.", registry=r
        )
        self.listener_reconnects = Counter(
            "notifyq_listener_reconnects", "LISTEN connections re-established.", registry=r
        )
        self.leases_lost = Counter(
            "notifyq_leases_lost", "Leases found lost; their handlers were cancelled.", registry=r
        )
        self.build_info = Info("notifyq_build", "notifyq version.", registry=r)
        self.build_info.info({"version": version})

    def queue_label(self, queue: str) -> str:
        return queue if queue in self._queues else OTHER

    def task_label(self, task: str) -> str:
        return task if task in self._tasks else OTHER
