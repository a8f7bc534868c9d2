"""Every Prometheus metric notifyq exports. Names and labels are public API.

Label values never come straight from row data. `task` is one of this daemon's registered task names,
else `other`. `queue` on job metrics is one of the served queues (validated config), else `other`. The
database gauges (`notifyq_queue_*`) report every queue that has jobs, because an operator wants to see
queues no daemon serves; queue names are already constrained by the jobs table's CHECK, and their number
is capped at MAX_QUEUE_LABELS (served queues first, then the busiest), the rest folded into `other`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

OTHER = "other"
MAX_QUEUE_LABELS = 50
QUEUE_STATES = ("queued", "scheduled", "running", "failed")
OUTCOMES = ("succeeded", "retried", "failed", "discarded", "cancelled", "timed_out", "lease_lost")
WAKE_SOURCES = ("notify", "poll", "timer", "slot", "reconnect", "idle", "rescue", "stop")

# 5 ms to 30 min.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_WAIT_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


@dataclass(frozen=True, slots=True)
class JobMetrics:
    """The per-job series of one (queue, task) label pair, looked up once: `labels()` on every job
    cost more than a no-op job's own work."""

    started: Any
    running: Any
    waited: Any
    duration: Any
    completed: dict[str, Any]


class Metrics:
    """One daemon's metrics, in a registry of its own."""

    def __init__(self, queues: Iterable[str], tasks: Iterable[str], version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._queues = tuple(dict.fromkeys(queues))
        self._served = frozenset(self._queues)
        self._tasks = frozenset(tasks)
        r = self.registry
        qt = ["queue", "task"]
        self.jobs_started = Counter("notifyq_jobs_started", "Jobs whose handler started.", qt, registry=r)
        self.jobs_completed = Counter(
            "notifyq_jobs_completed", "Attempts finished, by outcome.", [*qt, "outcome"], registry=r
        )
        self.job_duration = Histogram(
            "notifyq_job_duration_seconds", "Handler run time.", qt, buckets=_DURATION_BUCKETS, registry=r
        )
        self.job_wait = Histogram(
            "notifyq_job_wait_seconds",
            "From the moment a job became runnable (its run_at) to its start.",
            qt,
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.jobs_running = Gauge("notifyq_jobs_running", "Handlers running now.", ["queue"], registry=r)
        self.worker_slots = Gauge("notifyq_worker_slots", "Jobs this daemon runs at once.", registry=r)
        self.claims = Counter("notifyq_claims", "Claim statements run.", registry=r)
        self.claim_batch = Histogram(
            "notifyq_claim_batch_size", "Jobs returned per claim.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.wakeups = Counter("notifyq_wakeups", "Dispatcher wake-ups, by source.", ["source"], registry=r)
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
        # From the database, refreshed in the background (never on the scrape path).
        self.queue_jobs = Gauge(
            "notifyq_queue_jobs",
            "Jobs by queue and state; 'scheduled' is queued with run_at in the future.",
            ["queue", "state"],
            registry=r,
        )
        self.queue_oldest_age = Gauge(
            "notifyq_queue_oldest_job_age_seconds",
            "Age of the oldest runnable queued job (now - run_at); 0 when none.",
            ["queue"],
            registry=r,
        )
        self.jobs_without_handler = Gauge(
            "notifyq_jobs_without_handler",
            "Queued jobs whose task no live worker serving their queue handles.",
            ["queue"],
            registry=r,
        )
        self.workers_alive = Gauge("notifyq_workers_alive", "Daemons seen recently.", registry=r)
        self.notification_queue_usage = Gauge(
            "notifyq_notification_queue_usage_ratio",
            "pg_notification_queue_usage(): fraction of the NOTIFY queue in use.",
            registry=r,
        )
        self.dead_tuples = Gauge(
            "notifyq_jobs_dead_tuples",
            "Dead row versions in notifyq.jobs (pg_stat_user_tables.n_dead_tup).",
            registry=r,
        )
        self.oldest_transaction_age = Gauge(
            "notifyq_oldest_transaction_age_seconds",
            "Age of the oldest open transaction in the database; a long one holds back vacuum.",
            registry=r,
        )
        self.stats_age = Gauge(
            "notifyq_stats_last_refresh_timestamp_seconds",
            "When the database gauges were last refreshed (Unix time).",
            registry=r,
        )
        self._per_job: dict[tuple[str, str], JobMetrics] = {}
        self._prefill()

    def _prefill(self) -> None:
        """Create the label sets known up front, so dashboards see zeros rather than gaps."""
        for queue in self._queues:
            self.jobs_running.labels(queue)
            for task in self._tasks:
                for outcome in OUTCOMES:
                    self.jobs_completed.labels(queue, task, outcome)
                self.jobs_started.labels(queue, task)
        for source in WAKE_SOURCES:
            self.wakeups.labels(source)

    def for_job(self, queue: str, task: str) -> JobMetrics:
        """The series for a job of this queue and task; keyed by label, so the cache stays bounded."""
        key = (self.queue_label(queue), self.task_label(task))
        found = self._per_job.get(key)
        if found is None:
            found = self._per_job[key] = JobMetrics(
                started=self.jobs_started.labels(*key),
                running=self.jobs_running.labels(key[0]),
                waited=self.job_wait.labels(*key),
                duration=self.job_duration.labels(*key),
                completed={o: self.jobs_completed.labels(*key, o) for o in OUTCOMES},
            )
        return found

    def queue_label(self, queue: str) -> str:
        return queue if queue in self._served else OTHER

    def task_label(self, task: str) -> str:
        return task if task in self._tasks else OTHER

    def set_queue_stats(
        self,
        counts: Mapping[tuple[str, str], int],
        oldest: Mapping[str, float],
        orphans: Mapping[str, int],
    ) -> None:
        """Replace the database gauges with a fresh reading, capping the number of queue labels."""
        label = self._row_queue_labels({q for q, _ in counts} | set(oldest) | set(orphans), counts)
        folded: dict[tuple[str, str], int] = {}
        for (queue, state), n in counts.items():
            key = (label[queue], state)
            folded[key] = folded.get(key, 0) + n
        ages: dict[str, float] = {}
        for queue, age in oldest.items():
            ages[label[queue]] = max(ages.get(label[queue], 0.0), age)
        without: dict[str, int] = {}
        for queue, n in orphans.items():
            without[label[queue]] = without.get(label[queue], 0) + n
        shown = set(label.values()) | set(self._queues)
        self.queue_jobs.clear()
        self.queue_oldest_age.clear()
        self.jobs_without_handler.clear()
        for queue in shown:
            for state in QUEUE_STATES:
                self.queue_jobs.labels(queue, state).set(folded.get((queue, state), 0))
            self.queue_oldest_age.labels(queue).set(ages.get(queue, 0.0))
            self.jobs_without_handler.labels(queue).set(without.get(queue, 0))

    def _row_queue_labels(self, queues: set[str], counts: Mapping[tuple[str, str], int]) -> dict[str, str]:
        size: dict[str, int] = {}
        for (queue, _), n in counts.items():
            size[queue] = size.get(queue, 0) + n
        ranked = sorted(queues, key=lambda q: (q not in self._served, -size.get(q, 0), q))
        keep = set(ranked[:MAX_QUEUE_LABELS])
        return {q: q if q in keep else OTHER for q in queues}
